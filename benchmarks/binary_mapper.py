"""Benchmark: chunked Binary Mapper post-sampler vs the dense T x C reference, forward + backward.

Run:  python benchmarks/binary_mapper.py [--sizes 1024x512,8192x1024] [--num-bits 16] [--json out.json]

Each size is T x D (tokens x hidden) with C = 2^H codes. Reported per variant: median forward+backward
wall time over --repeats runs after --warmup runs, and the peak extra memory of one forward+backward.
On CPU every (variant, size) runs in its own subprocess, one after the other, and memory is the peak RSS
(getrusage ru_maxrss) above the RSS after the inputs are allocated; on CUDA it is max_memory_allocated above
the memory allocated after setup. The dense reference keeps several fp32 T x C tensors alive (about 12 GiB at
T=8192, C=65536), so a size whose estimate exceeds the available memory is skipped with a note.

`run(...)` returns one dict per (variant, size) for a future unified benchmark command.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

try:
    import megatron_free  # noqa: F401
except ImportError:  # running as `python benchmarks/binary_mapper.py` from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_free.model.binary_mapper import (  # noqa: E402
    binary_mapper_post_sampler,
    dense_binary_mapper_reference,
)
from megatron_free.model.latent_rng import posterior_codes  # noqa: E402

DEFAULT_SIZES = ((1024, 512), (1024, 1024), (8192, 512), (8192, 1024))
VARIANTS = ("ours", "dense")
# fp32 T x C tensors the dense reference holds at its peak (log G, G, one-hot, Y+G-G, their grads), measured ~6
DENSE_TXC_COPIES = 7


def _measure(
    variant: str,
    tokens: int,
    hidden: int,
    num_bits: int,
    dtype: str,
    device: str,
    repeats: int,
    warmup: int,
    chunk_size: int,
) -> dict:
    """Time and peak memory of forward+backward for one variant and size, in this process."""
    torch_dtype = getattr(torch, dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(tokens, num_bits, generator=gen, device=device, dtype=torch_dtype).requires_grad_()
    weight = 0.02 * torch.randn(2**num_bits, hidden, generator=gen, device=device, dtype=torch_dtype)
    weight.requires_grad_()
    weight.grad = torch.zeros_like(weight)  # the weight grad buffer is part of the model, not of the step
    logits.grad = torch.zeros_like(logits)
    codes = posterior_codes(logits[None], torch.tensor([0], device=device), torch.arange(tokens, device=device)[None])[
        0
    ]
    grad_out = torch.randn(tokens, hidden, generator=gen, device=device, dtype=torch_dtype)

    if variant == "ours":

        def step():
            binary_mapper_post_sampler(logits, codes, weight, chunk_size=chunk_size).backward(grad_out)
    elif variant == "dense":

        def step():
            dense_binary_mapper_reference(logits, codes, weight).backward(grad_out)
    else:
        raise ValueError(f"--variants got {variant!r}; expected one of {VARIANTS}")

    # one tiny step first, so lazy library/thread-pool initialisation is not counted as the step's memory
    small_logits = logits.detach()[:8, :4].clone().requires_grad_()
    small_weight = weight.detach()[:16].clone().requires_grad_()
    small_codes = codes[:8] % 16
    if variant == "ours":
        binary_mapper_post_sampler(small_logits, small_codes, small_weight).backward(grad_out[:8])
    else:
        dense_binary_mapper_reference(small_logits, small_codes, small_weight).backward(grad_out[:8])
    del small_logits, small_weight
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    else:
        base_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes on Linux
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()  # the timing must include the queued kernels
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base_mem
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_mem
    return {
        "benchmark": "binary_mapper",
        "variant": variant,
        "tokens": tokens,
        "hidden": hidden,
        "num_bits": num_bits,
        "codes": 2**num_bits,
        "dtype": dtype,
        "device": device,
        "chunk_size": chunk_size,
        "threads": torch.get_num_threads(),
        "time_ms": 1e3 * statistics.median(times),
        "time_ms_all": [1e3 * t for t in times],
        "peak_mem_mib": peak / 2**20,
        "mem_method": "cuda max_memory_allocated" if cuda else "peak RSS (ru_maxrss) above setup",
    }


def _available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    import psutil

    return psutil.virtual_memory().available


def run(
    sizes=DEFAULT_SIZES,
    num_bits: int = 16,
    dtype: str = "float32",
    device: str | None = None,
    repeats: int = 3,
    warmup: int = 1,
    chunk_size: int = 4096,
    variants=VARIANTS,
    isolate: bool | None = None,
) -> list[dict]:
    """Measure every (variant, T x D) in `sizes`; on CPU each in a fresh subprocess (isolate) for clean peak RSS."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    isolate = (device == "cpu") if isolate is None else isolate
    results = []
    for tokens, hidden in sizes:
        for variant in variants:
            spec = dict(
                variant=variant,
                tokens=tokens,
                hidden=hidden,
                num_bits=num_bits,
                dtype=dtype,
                device=device,
                repeats=repeats,
                warmup=warmup,
                chunk_size=chunk_size,
            )
            if variant == "dense":
                need = (
                    DENSE_TXC_COPIES
                    * tokens
                    * 2**num_bits
                    * torch.tensor([], dtype=getattr(torch, dtype)).element_size()
                )
                if need > 0.9 * _available_bytes(device):
                    results.append(
                        {
                            **spec,
                            "benchmark": "binary_mapper",
                            "skipped": f"dense needs ~{need / 2**30:.1f} GiB, not available",
                        }
                    )
                    continue
            if isolate:
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True
                )
                if proc.returncode != 0:
                    results.append(
                        {
                            **spec,
                            "benchmark": "binary_mapper",
                            "skipped": f"subprocess exit {proc.returncode}: {proc.stderr.strip()[-300:]}",
                        }
                    )
                    continue
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            else:
                results.append(_measure(**spec))
            print(_row_summary(results[-1]), file=sys.stderr, flush=True)
    return results


def _row_summary(r: dict) -> str:
    return f"  {r['variant']:>5} T={r['tokens']} D={r['hidden']}: {r['time_ms']:.1f} ms, {r['peak_mem_mib']:.0f} MiB"


def format_table(results: list[dict]) -> str:
    """One line per size: ours vs dense time and peak memory, and dense/ours ratios."""
    by_size: dict[tuple, dict] = {}
    for r in results:
        by_size.setdefault((r["tokens"], r["num_bits"], r["hidden"]), {})[r["variant"]] = r
    header = (
        f"| {'T':>5} | {'H':>2} | {'D':>4} | {'ours ms':>9} | {'dense ms':>9} | {'time x':>6} | "
        f"{'ours MiB':>8} | {'dense MiB':>9} | {'mem x':>6} |"
    )
    lines = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    for (tokens, num_bits, hidden), row in by_size.items():
        ours, dense = row.get("ours", {}), row.get("dense", {})

        def cell(r, key, fmt):
            return format(r[key], fmt) if key in r else ("skip" if "skipped" in r else "-")

        time_ratio = mem_ratio = "-"
        if "time_ms" in ours and "time_ms" in dense:
            time_ratio = f"{dense['time_ms'] / ours['time_ms']:.2f}"
            mem_ratio = f"{dense['peak_mem_mib'] / max(ours['peak_mem_mib'], 1e-9):.1f}"
        lines.append(
            f"| {tokens:>5} | {num_bits:>2} | {hidden:>4} | {cell(ours, 'time_ms', '9.1f'):>9} | "
            f"{cell(dense, 'time_ms', '9.1f'):>9} | {time_ratio:>6} | "
            f"{cell(ours, 'peak_mem_mib', '8.0f'):>8} | {cell(dense, 'peak_mem_mib', '9.0f'):>9} | "
            f"{mem_ratio:>6} |"
        )
    for r in results:
        if "skipped" in r:
            lines.append(f"skipped {r['variant']} T={r['tokens']} D={r['hidden']}: {r['skipped']}")
    return "\n".join(lines)


def _parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple(tuple(int(x) for x in item.lower().split("x")) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: expected TxD[,TxD...], e.g. 1024x512,8192x1024")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_parse_sizes, default=DEFAULT_SIZES, help="TxD list, e.g. 1024x512,8192x1024")
    parser.add_argument("--num-bits", type=int, default=16, help="H; C = 2^H codes")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of ours,dense")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_measure(**json.loads(args.child))))
        return
    results = run(
        sizes=args.sizes,
        num_bits=args.num_bits,
        dtype=args.dtype,
        device=args.device,
        repeats=args.repeats,
        warmup=args.warmup,
        chunk_size=args.chunk_size,
        variants=tuple(args.variants.split(",")),
    )
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

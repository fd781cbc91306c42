"""All benchmarks in one command: one table per part on stdout, every number in --json.

Run from the repository root:

    python -m benchmarks --json benchmark_results.json            # everything (~25 min on 2 CPU cores)
    python -m benchmarks --parts step,preprocess                   # some parts
    python -m benchmarks --quick --json /tmp/quick.json            # tiny sizes: a sanity run, not a measurement

Parts:
  step        (a) training step time and memory, Free Transformer vs baseline, same config, side by side,
                  with the analytic FLOP ratio (benchmarks/training_step.py)
  mapper      (b) chunked binary mapper vs the dense T x C reference (benchmarks/binary_mapper.py);
                  target: >= 10x less peak memory and no slower
  preprocess  (c) preprocessing throughput on the Python standard library, beside Megatron-LM's
                  tools/preprocess_data.py with --megatron-lm DIR (benchmarks/preprocess.py)
  gpu         (d) tokens/s and MFU of the 1.5B shape, bf16 and FP8, Free vs baseline; only with CUDA and
                  megatron-core (skipped with the reason otherwise)

The JSON holds {"meta": date, command, machine, load, versions; "step": [...], "mapper": [...],
"preprocess": [...], "gpu": [...]}, one dict per measured row.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from benchmarks import binary_mapper, cpu_model, preprocess, training_step

PARTS = ("step", "mapper", "preprocess", "gpu")
MAPPER_TARGET_MEMORY = 10.0  # dense / ours peak memory, at least
MAPPER_TARGET_TIME = 1.0  # dense / ours time, at least ("no slower")
QUICK_PREPROCESS_FILES = 40


def machine_info() -> dict:
    import torch

    info = {
        "cpu_model": cpu_model() or "unknown",
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }  # no device query here: the workers own the GPU
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        info["megatron_core"] = version("megatron-core")
    except Exception:  # noqa: BLE001 - not installed
        info["megatron_core"] = None
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
        info["git_commit"] = commit.stdout.strip()
        info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextmanager
def _stdlib_subset(num_files: int):
    """--quick: the preprocessing benchmark on the first files of the stdlib corpus only."""
    full = preprocess.stdlib_files
    preprocess.stdlib_files = lambda: full()[:num_files]
    try:
        yield
    finally:
        preprocess.stdlib_files = full


def mapper_verdicts(results: list[dict]) -> list[dict]:
    """Per size: dense / ours memory and time against the targets, with the memory also counted without
    the C x D fp32 weight gradient that both variants materialize (a cost of the weight, not of T x C)."""
    by_size: dict[tuple, dict] = {}
    for r in results:
        by_size.setdefault((r["tokens"], r["num_bits"], r["hidden"]), {})[r["variant"]] = r
    verdicts = []
    for (tokens, num_bits, hidden), row in by_size.items():
        ours, dense = row.get("ours", {}), row.get("dense", {})
        if "time_ms" not in ours or "time_ms" not in dense:
            verdicts.append(
                {
                    "tokens": tokens,
                    "num_bits": num_bits,
                    "hidden": hidden,
                    "verdict": "not measured: " + (ours.get("skipped") or dense.get("skipped") or "?"),
                }
            )
            continue
        weight_grad_mib = 2**num_bits * hidden * 4 / 2**20
        mem_x = dense["peak_mem_mib"] / max(ours["peak_mem_mib"], 1e-9)
        mem_x_without_dw = (dense["peak_mem_mib"] - weight_grad_mib) / max(ours["peak_mem_mib"] - weight_grad_mib, 1e-9)
        time_x = dense["time_ms"] / ours["time_ms"]
        verdicts.append(
            {
                "tokens": tokens,
                "num_bits": num_bits,
                "hidden": hidden,
                "memory_x": mem_x,
                "weight_grad_mib": weight_grad_mib,
                "memory_x_without_weight_grad": mem_x_without_dw,
                "time_x": time_x,
                "memory_target_met": mem_x >= MAPPER_TARGET_MEMORY,
                "memory_target_met_without_weight_grad": mem_x_without_dw >= MAPPER_TARGET_MEMORY,
                "time_target_met": time_x >= MAPPER_TARGET_TIME,
            }
        )
    return verdicts


def format_mapper_verdicts(verdicts: list[dict]) -> str:
    lines = []
    for v in verdicts:
        where = f"T={v['tokens']} H={v['num_bits']} D={v['hidden']}"
        if "verdict" in v:
            lines.append(f"{where}: {v['verdict']}")
            continue
        met = {True: "met", False: "NOT met"}
        lines.append(
            f"{where}: {v['memory_x']:.1f}x less memory ({met[v['memory_target_met']]}; "
            f"{v['memory_x_without_weight_grad']:.1f}x without the {v['weight_grad_mib']:.0f} MiB C x D weight "
            f"gradient: {met[v['memory_target_met_without_weight_grad']]}), "
            f"{v['time_x']:.2f}x the dense speed ({met[v['time_target_met']]})"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {','.join(PARTS)}")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes everywhere (a sanity run in about a minute); explicit flags still win",
    )
    p.add_argument("--json", type=Path, default=None, help="write every result to this file")
    g = p.add_argument_group("step (a)")
    g.add_argument(
        "--step-configs",
        default=None,
        help="comma list of specs like L8-D512-T256-B2-H16 (see benchmarks/training_step.py); "
        f"default {','.join(c.name for c in training_step.CPU_CONFIGS)}",
    )
    g.add_argument("--steps", type=int, default=None, help="timed steps per model (default 10; quick 2)")
    g.add_argument("--warmup", type=int, default=None, help="untimed steps per model first (default 2; quick 1)")
    g.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's)")
    g = p.add_argument_group("mapper (b)")
    g.add_argument(
        "--mapper-sizes", default=None, help="TxD list (default 1024x512,1024x1024,8192x512,8192x1024; quick 256x64)"
    )
    g.add_argument("--mapper-bits", type=int, default=None, help="H (default 16; quick 8)")
    g.add_argument("--mapper-repeats", type=int, default=None, help="timed runs per variant (default 3; quick 1)")
    g = p.add_argument_group("preprocess (c)")
    g.add_argument("--preprocess-workers", type=int, nargs="+", default=[1, 2])
    g.add_argument(
        "--preprocess-tokenizer",
        choices=("sentencepiece", "byte"),
        default=None,
        help="default sentencepiece; quick byte",
    )
    g.add_argument("--preprocess-repeats", type=int, default=None, help="runs per worker count (default 3; quick 1)")
    g.add_argument(
        "--megatron-lm",
        default=None,
        help="a Megatron-LM checkout: its tools/preprocess_data.py runs beside ours (skipped without)",
    )
    g.add_argument(
        "--megatron-lm-pythonpath",
        default=None,
        help="folders added to PYTHONPATH for Megatron-LM's process only (its six, triton)",
    )
    g.add_argument(
        "--preprocess-site-packages",
        action="store_true",
        help="add this interpreter's site-packages .py files to the stdlib corpus",
    )
    g = p.add_argument_group("gpu (d)")
    g.add_argument(
        "--gpu-layers", type=int, default=None, help="layers of the 1.5B shape (default 28, all of them; quick 2)"
    )
    g.add_argument("--gpu-steps", type=int, default=None, help="timed steps per model (default 10; quick 2)")
    g.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak per GPU for MFU (default 989, H100 SXM)"
    )
    return p


def _pick(value, default, quick_value, quick: bool):
    return value if value is not None else (quick_value if quick else default)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts {args.parts}: unknown {', '.join(unknown)}; expected some of {','.join(PARTS)}")
    q = args.quick
    try:
        step_configs = (
            [training_step.parse_config(s) for s in args.step_configs.split(",")]
            if args.step_configs
            else list(training_step.QUICK_CONFIGS if q else training_step.CPU_CONFIGS)
        )
        mapper_sizes = (
            binary_mapper._parse_sizes(args.mapper_sizes)
            if args.mapper_sizes
            else ((256, 64),)
            if q
            else binary_mapper.DEFAULT_SIZES
        )
    except (ValueError, argparse.ArgumentTypeError) as e:
        parser.error(str(e))

    results = {
        "meta": {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)]),
            "quick": q,
            "parts": parts,
            "machine": machine_info(),
            "load_average_start": load_average(),
        }
    }
    meta = results["meta"]
    print(
        f"{meta['date']}  {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}), "
        f"load average {meta['load_average_start']}{'  [--quick: tiny sizes, not a measurement]' if q else ''}"
    )

    if "step" in parts:
        steps, warmup = _pick(args.steps, 10, 2, q), _pick(args.warmup, 2, 1, q)
        print(
            f"\n(a) training step, Free Transformer / baseline, same config, alternating, CPU fp32; "
            f"median of {steps} steps after {warmup}",
            flush=True,
        )
        results["step"] = training_step.run(step_configs, steps, warmup, args.threads)
        print(training_step.format_table(results["step"]))
        meta["load_average_after_step"] = load_average()

    if "mapper" in parts:
        num_bits = _pick(args.mapper_bits, 16, 8, q)
        repeats = _pick(args.mapper_repeats, 3, 1, q)
        print(
            f"\n(b) binary mapper forward+backward, chunked (ours) vs dense T x C reference, H={num_bits}, "
            f"median of {repeats}",
            flush=True,
        )
        results["mapper"] = binary_mapper.run(
            sizes=mapper_sizes, num_bits=num_bits, repeats=repeats, warmup=0 if q else 1
        )
        print(binary_mapper.format_table(results["mapper"]))
        results["mapper_verdicts"] = mapper_verdicts(results["mapper"])
        print(f"target: >= {MAPPER_TARGET_MEMORY:.0f}x less peak memory and no slower")
        print(format_mapper_verdicts(results["mapper_verdicts"]))
        meta["load_average_after_mapper"] = load_average()

    if "preprocess" in parts:
        tokenizer = _pick(args.preprocess_tokenizer, "sentencepiece", "byte", q)
        repeats = _pick(args.preprocess_repeats, 3, 1, q)
        subset = f" (first {QUICK_PREPROCESS_FILES} files)" if q else ""
        print(
            f"\n(c) preprocessing the stdlib .py files{subset}, {tokenizer} tokenizer, median of {repeats}", flush=True
        )
        with _stdlib_subset(QUICK_PREPROCESS_FILES) if q else nullcontext():
            results["preprocess"] = preprocess.run(
                tuple(args.preprocess_workers),
                tokenizer,
                repeats=repeats,
                megatron_lm=args.megatron_lm,
                megatron_lm_pythonpath=args.megatron_lm_pythonpath,
                site_packages=args.preprocess_site_packages,
            )
        preprocess.print_table(results["preprocess"])
        meta["load_average_after_preprocess"] = load_average()

    if "gpu" in parts:
        reason = _gpu_unavailable()
        print("\n(d) GPU throughput, 1.5B shape, Free Transformer vs baseline", flush=True)
        if reason:
            print(f"skipped: {reason}")
            results["gpu"] = [{"benchmark": "gpu_throughput", "skipped": reason}]
        else:
            results["gpu"] = training_step.run_gpu(
                _pick(args.gpu_layers, None, 2, q),
                _pick(args.gpu_steps, 10, 2, q),
                warmup=1 if q else 3,
                peak_tflops=args.peak_tflops,
            )
            print(training_step.format_throughput_table(results["gpu"]))

    meta["load_average_end"] = load_average()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _gpu_unavailable() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device on this machine"
    try:
        missing = importlib.util.find_spec("megatron.core") is None
    except ModuleNotFoundError:  # no megatron package at all
        missing = True
    if missing:
        return "megatron-core is not installed"
    return None


if __name__ == "__main__":
    sys.exit(main())

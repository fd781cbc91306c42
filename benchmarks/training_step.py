"""Benchmark: training step time and peak memory of the Free Transformer vs its baseline, same config.

Run:  python -m benchmarks.training_step [--configs L8-D512-T256-B2-H16,L8-D512-T256-B2-H8]
                                         [--steps 10] [--warmup 2] [--json out.json]

A config is a dash-separated spec: L layers, D hidden, T sequence length, B micro batch, H latent bits,
and optionally V vocabulary (default 32000), F FFN hidden (default 8/3 D rounded up to 64), A query heads
(default D/64), G KV groups (default A/4), M microbatches per step (default 1).

Each model is built once, by megatron_free.pretrain.setup() on --mock-data, in its own worker process
(the CPU runtime patches torch process-wide, and peak memory is per process). Every step is one
megatron_free.training.loop.train_step() (forward-backward through megatron's schedule, the optimizer
step) plus the LR scheduler step, as in the training loop. On CPU the two workers are driven
alternately, one step at a time, in the order F B B F F B ..., so that a change in the load of a shared
machine hits both models alike; the one that is not stepping waits on its pipe. On CUDA they run one
after the other (two 1.5B models and their optimizer states do not fit one GPU together).

Reported per model: the median step time over --steps timed steps after --warmup steps, and its memory:
on CPU the peak RSS of the worker (getrusage ru_maxrss, over its whole life) above its RSS once torch,
megatron-core and this package were imported, so parameters, gradients, optimizer state, activations and
data count and the libraries do not; on CUDA torch.cuda.max_memory_allocated(). Beside the measured
ratios (Free / baseline) stands the analytic FLOP ratio of megatron_free.training.flops: the encoder
block and readout (3x their forward) plus the binary mapper's backward, a T x C x D product.

`run(...)` returns one dict per config; `format_table` prints them.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

try:
    import megatron_free  # noqa: F401
except ImportError:  # running as `python benchmarks/training_step.py` from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_free.training.flops import ModelShape, parameter_counts, training_flops_per_token  # noqa: E402


@dataclass(frozen=True)
class StepConfig:
    """One model shape and batch, shared by the Free Transformer and its baseline."""

    num_layers: int
    hidden_size: int
    seq_length: int
    micro_batch_size: int
    latent_bits: int
    vocab_size: int = 32000
    ffn_hidden_size: int = 0  # 0: 8/3 x hidden, rounded up to a multiple of 64 (Llama's rule)
    num_attention_heads: int = 0  # 0: hidden / 64
    num_query_groups: int = 0  # 0: heads / 4 (at least 1)
    num_microbatches: int = 1

    def __post_init__(self):
        if not self.ffn_hidden_size:
            object.__setattr__(self, "ffn_hidden_size", 64 * math.ceil(8 * self.hidden_size / 3 / 64))
        if not self.num_attention_heads:
            object.__setattr__(self, "num_attention_heads", max(1, self.hidden_size // 64))
        if not self.num_query_groups:
            object.__setattr__(self, "num_query_groups", max(1, self.num_attention_heads // 4))

    @property
    def name(self) -> str:
        name = f"L{self.num_layers}-D{self.hidden_size}-T{self.seq_length}-B{self.micro_batch_size}-H{self.latent_bits}"
        default = StepConfig(
            self.num_layers, self.hidden_size, self.seq_length, self.micro_batch_size, self.latent_bits
        )
        for letter, field in _SPEC_FIELDS.items():
            if letter not in "LDTBH" and getattr(self, field) != getattr(default, field):
                name += f"-{letter}{getattr(self, field)}"
        return name

    @property
    def tokens_per_step(self) -> int:
        return self.seq_length * self.micro_batch_size * self.num_microbatches

    def argv(
        self,
        baseline: bool,
        iterations: int,
        bf16: bool = False,
        fp8: bool = False,
        transformer_impl: str | None = None,
    ) -> list[str]:
        """Flags for megatron_free.arguments.parse_args: the same for both models but --baseline."""
        argv = [
            "--num-layers",
            str(self.num_layers),
            "--hidden-size",
            str(self.hidden_size),
            "--ffn-hidden-size",
            str(self.ffn_hidden_size),
            "--num-attention-heads",
            str(self.num_attention_heads),
            "--group-query-attention",
            "--num-query-groups",
            str(self.num_query_groups),
            "--seq-length",
            str(self.seq_length),
            "--micro-batch-size",
            str(self.micro_batch_size),
            "--global-batch-size",
            str(self.micro_batch_size * self.num_microbatches),
            "--mock-data",
            "--vocab-size",
            str(self.vocab_size),
            "--make-vocab-size-divisible-by",
            "128",
            "--latent-bits",
            str(self.latent_bits),
            "--train-iters",
            str(iterations),
            "--lr-warmup-iters",
            "0",
            "--seed",
            "1234",
        ]
        if baseline:
            argv.append("--baseline")
        if bf16:
            argv.append("--bf16")
        if fp8:
            argv += ["--fp8-format", "hybrid"]
        if transformer_impl:
            argv += ["--transformer-impl", transformer_impl]
        return argv

    def shape(self, baseline: bool) -> ModelShape:
        vocab = 128 * math.ceil(self.vocab_size / 128)  # as --make-vocab-size-divisible-by 128 pads it
        return ModelShape(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups,
            vocab_size=vocab,
            seq_length=self.seq_length,
            tied_embeddings=True,
            baseline=baseline,
            latent_bits=self.latent_bits,
        )


_SPEC_FIELDS = {
    "L": "num_layers",
    "D": "hidden_size",
    "T": "seq_length",
    "B": "micro_batch_size",
    "H": "latent_bits",
    "V": "vocab_size",
    "F": "ffn_hidden_size",
    "A": "num_attention_heads",
    "G": "num_query_groups",
    "M": "num_microbatches",
}


def parse_config(spec: str) -> StepConfig:
    """'L8-D512-T256-B4-H16[-V32000-F1408-A8-G2-M1]' -> StepConfig; the error names the bad part."""
    values = {}
    for part in spec.split("-"):
        match = re.fullmatch(r"([A-Z])(\d+)", part.strip())
        if not match or match.group(1) not in _SPEC_FIELDS:
            raise ValueError(
                f"training-step config {spec!r}: bad part {part!r}; expected letters "
                f"{''.join(_SPEC_FIELDS)} each followed by a number, e.g. L8-D512-T256-B4-H16"
            )
        values[_SPEC_FIELDS[match.group(1)]] = int(match.group(2))
    missing = [letter for letter in "LDTBH" if _SPEC_FIELDS[letter] not in values]
    if missing:
        raise ValueError(f"training-step config {spec!r}: missing {', '.join(missing)} (L, D, T, B, H are required)")
    return StepConfig(**values)


# CPU: a step takes ~1 s on 2 idle cores; H=16 (the paper's 65536 codes) beside H=8 (a 256-row
# post-sampler, so nearly the encoder block alone).
CPU_CONFIGS = tuple(
    parse_config(s) for s in ("L4-D256-T512-B2-H16", "L4-D256-T512-B2-H8", "L8-D512-T256-B2-H16", "L8-D512-T256-B2-H8")
)
QUICK_CONFIGS = (parse_config("L2-D64-T32-B2-H8-V512"),)
# The paper's 1.5B shape (Qwen2-1.5B-like: 28 x 1536, 12/2 heads, FFN 8960, 2^17 vocabulary, tied).
GPU_1P5B = parse_config("L28-D1536-T2048-B2-H16-V131072-F8960-A12-G2-M8")


def analytic(config: StepConfig) -> dict:
    """Training FLOPs per token and parameter counts of both models, and their ratios."""
    free = training_flops_per_token(config.shape(baseline=False))
    base = training_flops_per_token(config.shape(baseline=True))
    free_params = parameter_counts(config.shape(baseline=False))["total"]
    base_params = parameter_counts(config.shape(baseline=True))["total"]
    return {
        "flops_per_token": {"free": free, "baseline": base},
        "flop_ratio": free["total"] / base["total"],
        "flop_share_encoder": free["encoder"] / base["total"],
        "flop_share_mapper_backward": free["mapper_backward"] / base["total"],
        "parameters": {"free": free_params, "baseline": base_params},
        "parameter_ratio": free_params / base_params,
    }


# ----------------------------------------------------------------------------------------------
# The worker: one model, built once, stepped on request.


def _worker(conn, argv: list[str], threads: int | None) -> None:
    """Builds one model with pretrain.setup(), then answers 'step' with one timed training step
    and 'stop' with its memory figures. Runs in a fresh (spawned) process."""
    try:
        import logging
        import resource
        import warnings

        warnings.filterwarnings("ignore")  # megatron-core warns that Transformer Engine / apex are absent
        logging.getLogger("megatron.core.datasets").setLevel(logging.ERROR)  # mock data has no index cache
        import psutil
        import torch

        if threads:
            torch.set_num_threads(threads)
        from megatron_free.arguments import parse_args
        from megatron_free.parallel.distributed import destroy_distributed, select_device
        from megatron_free.pretrain import setup
        from megatron_free.run_config import batch_config
        from megatron_free.training.loop import train_step
        from megatron_free.training.step import make_forward_step

        cuda = torch.cuda.is_available()
        process = psutil.Process()
        rss_imports = process.memory_info().rss
        args = parse_args(argv, world_size=1)
        select_device()
        model_chunks, optimizer, scheduler, _, train_iter, _, _ = setup(args)
        rss_setup = process.memory_info().rss
        parameters = sum(p.numel() for chunk in model_chunks for p in chunk.parameters())
        # As the loop scales it: the loss scale (1 without fp16) over the microbatches.
        forward_step = make_forward_step(kl_loss_scale=optimizer.get_loss_scale().item() / args.num_microbatches)
        batch = batch_config(args)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        conn.send(
            {
                "ready": True,
                "parameters": parameters,
                "threads": torch.get_num_threads(),
                "device": torch.cuda.get_device_name() if cuda else "cpu",
            }
        )
        while (command := conn.recv()) == "step":
            start, start_cpu = time.perf_counter(), time.process_time()
            losses, _, updated = train_step(forward_step, train_iter, model_chunks, optimizer, batch, args.clip_grad)
            if updated:
                scheduler.step(increment=args.global_batch_size)
            if cuda:
                torch.cuda.synchronize()  # the time must include the queued kernels
            conn.send(
                {
                    "seconds": time.perf_counter() - start,
                    "cpu_seconds": time.process_time() - start_cpu,
                    "lm_loss": losses.get("lm loss"),
                }
            )
        assert command == "stop", command
        if cuda:
            memory = {
                "mem_mib": torch.cuda.max_memory_allocated() / 2**20,
                "mem_method": "torch.cuda.max_memory_allocated",
            }
        else:
            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
            memory = {
                "mem_mib": (peak_rss - rss_imports) / 2**20,
                "mem_method": "peak RSS (ru_maxrss) above the RSS after imports",
                "peak_rss_mib": peak_rss / 2**20,
                "rss_imports_mib": rss_imports / 2**20,
                "rss_after_setup_mib": rss_setup / 2**20,
            }
        conn.send(memory)
        destroy_distributed()
    except BaseException:  # noqa: BLE001 - the traceback goes back to the parent
        conn.send({"error": traceback.format_exc()})


@contextmanager
def _environment(**values):
    """Environment variables for the workers started inside (spawn copies os.environ at start)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Worker:
    def __init__(self, ctx, label: str, argv: list[str], threads: int | None):
        self.label = label
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, argv, threads), daemon=True)
        self.process.start()
        child.close()

    def receive(self, timeout: float = 1800.0) -> dict:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.label} worker gave no answer within {timeout:.0f} s")
        try:
            message = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.label} worker died (exit code {self.process.exitcode})") from None
        if "error" in message:
            raise RuntimeError(f"{self.label} worker failed:\n{message['error']}")
        return message

    def step(self) -> dict:
        self.conn.send("step")
        return self.receive()

    def stop(self) -> dict:
        self.conn.send("stop")
        memory = self.receive()
        self.process.join(timeout=60)
        return memory

    def kill(self):
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _summary(ready: dict, steps: list[dict], memory: dict, config: StepConfig, warmup: int) -> dict:
    times = [s["seconds"] for s in steps[warmup:]]
    median = statistics.median(times)
    return {
        "time_s": median,
        "time_s_all": times,
        "tokens_per_s": config.tokens_per_step / median,
        "cpu_s": statistics.median(s["cpu_seconds"] for s in steps[warmup:]),
        "lm_loss_last": steps[-1]["lm_loss"],
        "parameters": ready["parameters"],
        **memory,
    }


def measure_pair(
    config: StepConfig,
    steps: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    device: str = "cpu",
    bf16: bool = False,
    fp8: bool = False,
    transformer_impl: str | None = None,
    peak_tflops: float | None = None,
    log=sys.stderr,
) -> dict:
    """Free Transformer and baseline of one config: their step times and memory, the measured and the
    analytic ratios. On CPU both workers live together and step alternately; on CUDA one after the other."""
    ctx = mp.get_context("spawn")
    argvs = {
        label: config.argv(label == "baseline", warmup + steps, bf16, fp8, transformer_impl)
        for label in ("free", "baseline")
    }
    alternate = device == "cpu"
    env = {"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}
    results = {}
    with _environment(**env):
        groups = [("free", "baseline")] if alternate else [("free",), ("baseline",)]
        for labels in groups:
            workers = {label: _Worker(ctx, label, argvs[label], threads) for label in labels}
            try:
                ready = {label: w.receive() for label, w in workers.items()}
                taken = {label: [] for label in labels}
                for i in range(warmup + steps):
                    # F B, B F, F B, ...: each model steps first in half of the rounds
                    order = labels if i % 2 == 0 else labels[::-1]
                    for label in order:
                        taken[label].append(workers[label].step())
                for label, worker in workers.items():
                    results[label] = _summary(ready[label], taken[label], worker.stop(), config, warmup)
                    results[label]["device"] = ready[label]["device"]
                    results[label]["threads"] = ready[label]["threads"]
            finally:
                for worker in workers.values():
                    worker.kill()
    free, base = results["free"], results["baseline"]
    row = {
        "benchmark": "training_step",
        "config": config.name,
        **asdict(config),
        "device": free["device"],
        "dtype": "fp8 (hybrid) + bf16" if fp8 else "bf16" if bf16 else "float32",
        "threads": free["threads"],
        "alternating": alternate,
        "warmup": warmup,
        "steps": steps,
        "tokens_per_step": config.tokens_per_step,
        "free": free,
        "baseline": base,
        "time_ratio": free["time_s"] / base["time_s"],
        # median over rounds of (Free step / the baseline step next to it in time): a load change on a
        # shared machine hits both steps of a round alike
        "time_ratio_paired": statistics.median(f / b for f, b in zip(free["time_s_all"], base["time_s_all"])),
        # CPU seconds of the worker (all its threads): the work done, less sensitive to waiting for a core
        "cpu_time_ratio": free["cpu_s"] / base["cpu_s"],
        "mem_ratio": free["mem_mib"] / base["mem_mib"],
        **analytic(config),
    }
    for label in ("free", "baseline"):
        flops = row["flops_per_token"][label]["total"] * row[label]["tokens_per_s"]
        row[label]["model_tflops"] = flops / 1e12
        if peak_tflops:
            row[label]["mfu"] = flops / (peak_tflops * 1e12)
    if peak_tflops:
        row["peak_tflops"] = peak_tflops
    if log is not None:
        log.write(
            f"  {config.name}: free {free['time_s']:.3f} s {free['mem_mib']:.0f} MiB, "
            f"baseline {base['time_s']:.3f} s {base['mem_mib']:.0f} MiB\n"
        )
        log.flush()
    return row


def run(
    configs=CPU_CONFIGS,
    steps: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    device: str = "cpu",
    bf16: bool = False,
    fp8: bool = False,
    transformer_impl: str | None = None,
    peak_tflops: float | None = None,
    log=sys.stderr,
) -> list[dict]:
    """One row per config (see measure_pair)."""
    return [
        measure_pair(c, steps, warmup, threads, device, bf16, fp8, transformer_impl, peak_tflops, log) for c in configs
    ]


def _rule(header: str) -> str:
    """The markdown line under ``header``: one run of dashes per column, as wide as it."""
    return "|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|"


def format_table(results: list[dict]) -> str:
    """Per config: step times and memory of both models, measured ratios, analytic FLOP ratio."""
    header = (
        f"| {'config':<22} | {'free s':>6} | {'base s':>6} | {'time x':>6} | {'cpu x':>5} | {'free MiB':>8} | "
        f"{'base MiB':>8} | {'mem x':>5} | {'FLOP x':>6} | {'enc +':>5} | {'mapper +':>8} | {'params x':>8} |"
    )
    lines = [header, _rule(header)]
    for r in results:
        if "skipped" in r:
            lines.append(f"skipped {r.get('config', '')}: {r['skipped']}")
            continue
        lines.append(
            f"| {r['config']:<22} | {r['free']['time_s']:>6.3f} | {r['baseline']['time_s']:>6.3f} | "
            f"{r['time_ratio_paired']:>6.3f} | {r['cpu_time_ratio']:>5.2f} | {r['free']['mem_mib']:>8.0f} | "
            f"{r['baseline']['mem_mib']:>8.0f} | {r['mem_ratio']:>5.2f} | {r['flop_ratio']:>6.3f} | "
            f"{100 * r['flop_share_encoder']:>4.1f}% | {100 * r['flop_share_mapper_backward']:>7.1f}% | "
            f"{r['parameter_ratio']:>8.3f} |"
        )
    lines += [
        "free s, base s: median step wall time; time x: median over rounds of Free / baseline step time;",
        "cpu x: Free / baseline median CPU seconds per step; mem x: Free / baseline memory;",
        "FLOP x: analytic, 1 + enc + mapper (the encoder block and the mapper's T x C x D backward as shares",
        "of the baseline's FLOPs); params x: Free / baseline parameters, the C x D post-sampler included",
    ]
    return "\n".join(lines)


def format_throughput_table(results: list[dict]) -> str:
    """GPU rows: tokens/s, model TFLOP/s and MFU of both models per precision."""
    header = (
        f"| {'config':<44} | {'dtype':<18} | {'model':<8} | {'tokens/s':>9} | {'TFLOP/s':>7} | "
        f"{'MFU':>5} | {'GiB':>5} |"
    )
    lines = [header, _rule(header)]
    for r in results:
        if "skipped" in r:
            lines.append(f"skipped {r.get('config', '')} {r.get('dtype', '')}: {r['skipped']}")
            continue
        for label in ("free", "baseline"):
            m = r[label]
            mfu = f"{100 * m['mfu']:.1f}%" if "mfu" in m else "-"
            lines.append(
                f"| {r['config']:<44} | {r['dtype']:<18} | {label:<8} | {m['tokens_per_s']:>9.0f} | "
                f"{m['model_tflops']:>7.1f} | {mfu:>5} | {m['mem_mib'] / 1024:>5.1f} |"
            )
    return "\n".join(lines)


def run_gpu(
    num_layers: int | None = None, steps: int = 10, warmup: int = 3, peak_tflops: float = 989.0, log=sys.stderr
) -> list[dict]:
    """Part (d): the 1.5B shape (or --gpu-layers of it) in bf16 and FP8, Free vs baseline, on one GPU.
    MFU is against the dense bf16 peak (H100 SXM: 989 TFLOP/s) for both precisions."""
    import importlib.util

    import torch

    config = replace(GPU_1P5B, num_layers=num_layers) if num_layers else GPU_1P5B
    if not torch.cuda.is_available():
        return [{"benchmark": "gpu_throughput", "config": config.name, "skipped": "no CUDA device"}]
    has_te = importlib.util.find_spec("transformer_engine") is not None
    impl = "transformer_engine" if has_te else "local"
    rows = []
    for fp8 in (False, True):
        dtype = "fp8 (hybrid) + bf16" if fp8 else "bf16"
        if fp8 and not has_te:
            reason = "FP8 needs Transformer Engine, which is not installed"
            print(f"gpu {dtype}: skipped: {reason}", file=log)
            rows.append({"benchmark": "gpu_throughput", "config": config.name, "dtype": dtype, "skipped": reason})
            continue
        row = measure_pair(
            config,
            steps,
            warmup,
            None,
            "cuda",
            bf16=True,
            fp8=fp8,
            transformer_impl=impl,
            peak_tflops=peak_tflops,
            log=log,
        )
        row["benchmark"] = "gpu_throughput"
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--configs",
        default=",".join(c.name for c in CPU_CONFIGS),
        help="comma list of config specs, e.g. L8-D512-T256-B2-H16 (see the module docstring)",
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps per model; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads per worker (default: torch's)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    try:
        configs = [parse_config(s) for s in args.configs.split(",")]
    except ValueError as e:
        p.error(str(e))
    results = run(configs, args.steps, args.warmup, args.threads)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

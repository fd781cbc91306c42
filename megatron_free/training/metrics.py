"""Console lines like Megatron's and TensorBoard scalars, both written by the last rank (which
holds the last pipeline stage and so the loss).

A console line every --log-interval iterations:

    [2026-12-02 06:30:00] iteration       20/     100 | consumed samples:           80 |
    learning rate: 1.000000E-02 | grad norm: 0.812 | global batch size:     4 | ETA: 0:00:41 |
    mean of iterations 11-20: | elapsed time per iteration (ms): 512.3 | ... | lm loss: ... |
    number of skipped iterations:   0

(one line). Before "mean of iterations a-b:" the values are the current iteration's (learning
rate and grad norm are, as in Megatron-LM); after it, the means over those iterations (the
number of skipped iterations: their count). The ETA is the remaining iterations times that mean
iteration time. TensorBoard gets every iteration's values, not the means.
"""

from __future__ import annotations

import datetime
import os
import time

import torch
import torch.distributed as dist

# The losses of a training iteration that are logged, in this order.
LOGGED_LOSSES = ("lm loss", "kl", "kl loss", "kl above kappa")


def is_logging_rank() -> bool:
    """The last rank; before torch.distributed starts, the one whose RANK a launcher such as
    torchrun set last (every process when none is set)."""
    if dist.is_initialized():
        return dist.get_rank() == dist.get_world_size() - 1
    return int(os.environ.get("RANK", "0")) == int(os.environ.get("WORLD_SIZE", "1")) - 1


def print_rank_last(message: str) -> None:
    if is_logging_rank():
        print(message, flush=True)


def timestamp() -> str:
    """Megatron-LM's log-line time stamp: [YYYY-MM-DD HH:MM:SS], local time."""
    return datetime.datetime.now().strftime("[%Y-%m-%d %H:%M:%S]")


class TrainingLogger:
    """Accumulates per-iteration values between log lines; writes TensorBoard each iteration.
    ``train_iters`` (the run's last iteration) gives the ETA of each line."""

    def __init__(self, tensorboard_dir, log_interval, flops_per_iteration, world_size, peak_tflops, train_iters=None):
        self.log_interval = log_interval
        self.flops_per_iteration = flops_per_iteration
        self.world_size = world_size
        self.peak_tflops = peak_tflops
        self.train_iters = train_iters
        self.last_validation = None  # (iteration, {name: value}) of the latest evaluation
        self.writer = None
        if tensorboard_dir and is_logging_rank():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=tensorboard_dir, max_queue=10)
        self._explained = False
        self._reset()

    def _reset(self):
        self.sums, self.count, self.skipped, self.window_start = {}, 0, 0, time.perf_counter()

    def scalar(self, name, value, step):
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    def text(self, tag, text, step):
        """A TensorBoard text summary (rendered as markdown)."""
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def iteration(
        self,
        iteration,
        consumed_samples,
        tokens_per_iteration,
        losses,
        lr,
        grad_norm,
        params_norm,
        batch_size,
        skipped,
        elapsed,
    ):
        """Records one iteration; prints a Megatron-style line every --log-interval."""
        tflops = self.flops_per_iteration / elapsed / self.world_size / 1e12
        values = dict(losses)
        values.update(
            {
                "learning-rate": lr,
                "batch-size": batch_size,
                "tokens-per-second": tokens_per_iteration / elapsed,
                "throughput (TFLOP/s/GPU)": tflops,
            }
        )
        if grad_norm is not None:
            values["grad-norm"] = grad_norm
        if params_norm is not None:
            values["params-norm"] = params_norm
        if self.peak_tflops:
            values["mfu"] = tflops / self.peak_tflops
        if torch.cuda.is_available():
            values["mem-max-allocated-bytes"] = torch.cuda.max_memory_allocated()
        for name, value in values.items():
            self.scalar(name, value, iteration)
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1
        self.skipped += int(skipped)
        if iteration % self.log_interval == 0:
            self._print(iteration, consumed_samples, lr, grad_norm)

    def _print(self, iteration, consumed_samples, lr, grad_norm):
        if not self._explained:
            self._explained = True
            print_rank_last(
                f"log lines every {self.log_interval} iteration(s) (--log-interval): learning rate "
                f"and grad norm are the current iteration's; the values after 'mean of iterations "
                f"a-b:' are means over those iterations (skipped iterations: their count); "
                f"TensorBoard gets every iteration's values"
            )
        seconds_per_iteration = (time.perf_counter() - self.window_start) / self.count
        mean = {k: v / self.count for k, v in self.sums.items()}
        of_total = f"/{self.train_iters:8d}" if self.train_iters else ""
        fields = [
            f"{timestamp()} iteration {iteration:8d}{of_total}",
            f"consumed samples: {consumed_samples:12d}",
            f"learning rate: {lr:.6E}",
        ]
        if grad_norm is not None:
            fields.append(f"grad norm: {grad_norm:.3f}")
        fields.append(f"global batch size: {int(mean['batch-size']):5d}")
        if self.train_iters:
            remaining = max(self.train_iters - iteration, 0) * seconds_per_iteration
            fields.append(f"ETA: {datetime.timedelta(seconds=round(remaining))}")
        fields += [
            f"mean of iterations {iteration - self.count + 1}-{iteration}:",
            f"elapsed time per iteration (ms): {1000 * seconds_per_iteration:.1f}",
            f"throughput per GPU (TFLOP/s/GPU): {mean['throughput (TFLOP/s/GPU)']:.3f}",
            f"tokens/s: {mean['tokens-per-second']:.0f}",
        ]
        fields += [f"{name}: {mean[name]:.6E}" for name in LOGGED_LOSSES if name in mean]
        if "mfu" in mean:
            fields.append(f"MFU: {100 * mean['mfu']:.1f}%")
        fields.append(f"number of skipped iterations: {self.skipped:3d}")
        print_rank_last(" | ".join(fields))
        self._reset()

    def validation(self, iteration, results: dict):
        self.last_validation = (iteration, dict(results))
        for name, value in results.items():
            self.scalar(f"validation/{name}", value, iteration)
        text = " | ".join(f"{k}: {v:.6E}" for k, v in results.items())
        print_rank_last(f"{timestamp()} validation at iteration {iteration} | {text}")

    def close(self):
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()

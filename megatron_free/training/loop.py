"""The training loop on megatron-core: microbatches through get_forward_backward_func, megatron's
optimizer step with non-finite steps skipped, scheduler, validation, checkpoints, exits.

Exits, as in Megatron-LM, each saving a checkpoint first when --save is given:
    --exit-signal-handler     SIGTERM (what slurm sends before a kill) finishes the iteration
    --exit-interval N         after every N-th iteration
    --exit-duration-in-mins   once the process has run this long (set-up and loading included)
and the run's end at --train-iters. Every rank stops at the same iteration.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from typing import Callable, Optional

import psutil
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_free.model.losses import LOG2, importance_weighted_log_likelihood
from megatron_free.training.checkpointing import SaveConfig, checkpoint_dir, save_checkpoint
from megatron_free.training.metrics import LOGGED_LOSSES, print_rank_last
from megatron_free.training.step import SEQUENCE_NLL, latent_report, make_forward_step, sequence_log_q


class NonFiniteError(RuntimeError):
    """Too many iterations in a row with a non-finite loss or gradient norm."""


@dataclass(frozen=True)
class BatchConfig:
    """One iteration's batch: global = micro x data-parallel size x num_microbatches sequences."""

    global_batch_size: int
    micro_batch_size: int
    num_microbatches: int
    seq_length: int


@dataclass(frozen=True)
class ValidationConfig:
    """--eval-interval / --eval-iters and, for the Free Transformer, the IWAE estimate's draws of Z."""

    interval: int  # iterations between validations (0: none)
    iterations: int  # batches per validation
    baseline: bool
    latent_samples: int  # posterior draws of Z for the importance-weighted -log P(S) (0: none)
    latent_bits: int  # H, for the uniform prior's log P(Z)


@dataclass(frozen=True)
class ExitConfig:
    """When the run stops before --train-iters (Megatron-LM's flags; see the module docstring)."""

    signal_handler: bool = False
    interval: Optional[int] = None
    duration_in_mins: Optional[float] = None


@dataclass(frozen=True)
class LoopConfig:
    train_iters: int
    batch: BatchConfig
    clip_grad: float
    max_skipped_iterations: int
    validation: ValidationConfig
    exits: ExitConfig
    save: Optional[SaveConfig]  # None: no checkpoints (no --save)


@dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0
    skipped_in_a_row: int = 0
    skipped_total: int = 0
    saved_checkpoint: Optional[str] = None  # the directory this run saved last


class _SigtermFlag:
    """With --exit-signal-handler, SIGTERM only sets a flag (the previous handler is back when
    the loop ends); the loop finishes the iteration, saves and exits 0."""

    def __init__(self, enabled: bool):
        self.received = False
        self.enabled = enabled
        self.previous = signal.signal(signal.SIGTERM, self._handler) if enabled else None

    def _handler(self, signum, frame):
        self.received = True

    def any_rank(self) -> bool:
        flag = torch.tensor([int(self.received)], device=_device())
        dist.all_reduce(flag)  # every rank must stop at the same iteration (a device sync)
        return bool(flag.item())

    def restore(self):
        if self.enabled:
            signal.signal(signal.SIGTERM, self.previous)


def _minutes_running() -> float:
    """Minutes since this process started, the slowest rank's: what a job's time limit counts."""
    elapsed = torch.tensor([(time.time() - psutil.Process().create_time()) / 60], device=_device())
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return elapsed.item()


def _device():
    return torch.cuda.current_device() if torch.cuda.is_available() else "cpu"


def _sum_reports(reports) -> dict:
    """{name: (sum, count)} over microbatches, summed over data-parallel ranks (last stage)."""
    totals = {}
    for report in reports:
        for name, value in report.items():
            if name != SEQUENCE_NLL:
                totals[name] = totals.get(name, 0) + value
    if totals and parallel_state.get_data_parallel_world_size() > 1:
        for value in totals.values():
            dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
    return {name: (value[0] / value[1].clamp(min=1)).item() for name, value in totals.items()}


def _broadcast_from_last_stage(values: dict, names) -> dict:
    """Loss values live on the last pipeline stage; every rank gets them (same order of names)."""
    tensor = torch.tensor([values.get(n, float("nan")) for n in names], dtype=torch.float64, device=_device())
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        group = parallel_state.get_pipeline_model_parallel_group()
        last = dist.get_global_rank(group, dist.get_world_size(group) - 1)
        dist.broadcast(tensor, src=last, group=group)
    return dict(zip(names, tensor.tolist()))


def train_step(forward_step, data_iterator, model_chunks, optimizer, batch: BatchConfig, clip_grad: float):
    """One iteration. Returns (losses, grad_norm, updated); the update is skipped when a loss or
    the gradient norm is not finite."""
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    forward_backward = get_forward_backward_func()
    reports = forward_backward(
        forward_step_func=forward_step,
        data_iterator=data_iterator,
        model=model_chunks,
        num_microbatches=batch.num_microbatches,
        seq_length=batch.seq_length,
        micro_batch_size=batch.micro_batch_size,
        forward_only=False,
    )
    losses = _sum_reports(reports) if parallel_state.is_pipeline_last_stage() else {}
    losses.update(latent_report(model_chunks))
    # megatron's optimizer.step() in its parts, so a non-finite loss or gradient norm skips the
    # update instead of writing NaN into the weights. clip_grad_norm leaves the grads alone on NaN.
    found_inf = optimizer.prepare_grads()
    grad_norm = optimizer.clip_grad_norm(clip_grad) if clip_grad > 0 else optimizer.get_grad_norm()
    finite = not found_inf and grad_norm is not None and math.isfinite(grad_norm) and _finite_on_every_stage(losses)
    updated = finite and optimizer.step_with_ready_grads()
    return losses, grad_norm, updated


def _finite_on_every_stage(losses: dict) -> bool:
    """Whether the losses are finite; the same answer on every rank (the cross-entropy lives on
    the last pipeline stage only, the KL is already on every rank)."""
    finite = all(math.isfinite(v) for v in losses.values())
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return finite
    flag = torch.tensor([int(finite)], device=_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=parallel_state.get_pipeline_model_parallel_group())
    return bool(flag.item())  # a device sync


@torch.no_grad()
def evaluate(model_chunks, valid_iterator, validation: ValidationConfig, batch: BatchConfig) -> dict:
    """Validation cross-entropy: for the Free Transformer with Z from the encoder (posterior,
    an ELBO-like number) and from the uniform prior (E_Z[-log P(S|Z)], an upper bound of -log P(S)),
    and -log P(S) per token estimated with --eval-latent-samples posterior samples (importance-weighted,
    the number to set beside a baseline's lm loss)."""
    for chunk in model_chunks:
        chunk.eval()
    modes = ("prior",) if validation.baseline else ("posterior", "prior")
    draws = 0 if validation.baseline else validation.latent_samples
    batches = [next(valid_iterator) for _ in range(validation.iterations * batch.num_microbatches)]
    results = {}
    nll, log_q = [], []  # per draw of Z: each sequence's cross-entropy and log Q(Z|S)

    def forward_only(forward_step):
        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(batches),
            model=model_chunks,
            num_microbatches=len(batches),
            seq_length=batch.seq_length,
            micro_batch_size=batch.micro_batch_size,
            forward_only=True,
        )

    def record_draw(reports):
        if parallel_state.is_pipeline_last_stage():
            nll.append(torch.cat([r[SEQUENCE_NLL] for r in reports], dim=1))  # [2, sequences]
        log_q.append(sequence_log_q(model_chunks, len(batches), batch.micro_batch_size).reshape(-1))

    for mode in modes:
        per_sequence = mode == "posterior" and draws > 0
        reports = forward_only(make_forward_step(latent_mode=mode, per_sequence=per_sequence))
        losses = _sum_reports(reports) if parallel_state.is_pipeline_last_stage() else {}
        name = "lm loss" if validation.baseline else f"{mode} lm loss"
        results[name] = losses.get("lm loss", float("nan"))
        kl = latent_report(model_chunks)
        if mode == "posterior" and kl:
            results["kl"] = kl["kl"]
        if per_sequence:
            record_draw(reports)
    for draw in range(1, draws):
        record_draw(forward_only(make_forward_step(latent_mode="posterior", latent_draw=draw, per_sequence=True)))
        latent_report(model_chunks)  # these draws' KL statistics repeat the posterior pass's
    if draws:
        log_prior = -batch.seq_length * validation.latent_bits * LOG2
        results["iwae lm loss"] = _importance_weighted_loss(nll, log_q, log_prior)
    for chunk in model_chunks:
        chunk.train()
    return _broadcast_from_last_stage(results, sorted(results))


def _importance_weighted_loss(nll, log_q, log_prior: float) -> float:
    """-log P(S) per token from K draws: -sum_S IWAE(S) / tokens, over every data-parallel rank (the
    last pipeline stage's number; NaN elsewhere). log P(Z) = -T H log 2 under the uniform prior."""
    if not parallel_state.is_pipeline_last_stage():
        return float("nan")
    log_p = importance_weighted_log_likelihood(-torch.stack([d[0] for d in nll]), torch.stack(log_q), log_prior)
    totals = torch.stack([-log_p.sum(), nll[0][1].sum()])
    if parallel_state.get_data_parallel_world_size() > 1:
        dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    return (totals[0] / totals[1].clamp(min=1)).item()


def train(
    config: LoopConfig,
    model_chunks,
    optimizer,
    scheduler,
    train_iterator,
    valid_iterator,
    logger,
    state: TrainState,
    on_iteration: Optional[Callable[[TrainState, dict], None]] = None,
) -> TrainState:
    """Trains from ``state`` (a fresh or a loaded run) to --train-iters or an exit; returns the
    state. ``on_iteration(state, metrics)``, if given, sees every iteration's metrics: its losses
    ("lm loss", "kl", ...; NaN included), "grad norm", "skipped", and "validation/<name>" at
    evaluations. Raises NonFiniteError after --max-skipped-iterations skipped updates in a row."""
    model_chunks[0].config.timers = None
    sigterm = _SigtermFlag(config.exits.signal_handler)
    validation, save = config.validation, config.save
    try:
        while state.iteration < config.train_iters:
            metrics = _train_iteration(config, model_chunks, optimizer, scheduler, train_iterator, logger, state)
            if validation.interval and valid_iterator is not None and state.iteration % validation.interval == 0:
                results = evaluate(model_chunks, valid_iterator, validation, config.batch)
                logger.validation(state.iteration, results)
                metrics.update({f"validation/{name}": value for name, value in results.items()})
            if on_iteration is not None:
                on_iteration(state, metrics)

            exit_reason = _exit_reason(config.exits, state.iteration, sigterm)
            if save and (
                exit_reason
                or state.iteration == config.train_iters
                or (save.interval and state.iteration % save.interval == 0)
            ):
                save_checkpoint(save, state.iteration, model_chunks, optimizer, scheduler, state.consumed_samples)
                state.saved_checkpoint = str(checkpoint_dir(save.root, state.iteration))
                print_rank_last(f"saved checkpoint at iteration {state.iteration} to {save.root}")
            if exit_reason:
                print_rank_last(f"exiting at iteration {state.iteration}: {exit_reason}")
                break
    finally:
        sigterm.restore()
    return state


def _train_iteration(config: LoopConfig, model_chunks, optimizer, scheduler, train_iterator, logger, state) -> dict:
    """One optimizer step (or a skipped one), counted in ``state`` and logged; returns its metrics."""
    iteration_start = time.perf_counter()
    # The KL gradient is scaled as the schedule scales the cross-entropy: by the loss scale
    # (fp16) and 1 / num_microbatches.
    batch = config.batch
    kl_scale = optimizer.get_loss_scale().item() / batch.num_microbatches
    losses, grad_norm, updated = train_step(
        make_forward_step(kl_loss_scale=kl_scale), train_iterator, model_chunks, optimizer, batch, config.clip_grad
    )
    state.iteration += 1
    state.consumed_samples += batch.global_batch_size
    if updated:
        scheduler.step(increment=batch.global_batch_size)
        state.skipped_in_a_row = 0
    else:
        # The weights, the optimizer state and the LR schedule stay as they were; the batch is
        # consumed (as in Megatron-LM), so a resumed run sees the same data order.
        state.skipped_total += 1
        state.skipped_in_a_row += 1
        print_rank_last(
            f"iteration {state.iteration}: non-finite loss or grad norm ({_describe(losses, grad_norm)}); "
            f"update skipped ({state.skipped_in_a_row} in a row, {state.skipped_total} in all)"
        )
        if state.skipped_in_a_row >= config.max_skipped_iterations:
            raise NonFiniteError(
                f"{state.skipped_in_a_row} iterations in a row (up to iteration {state.iteration}) had "
                f"a non-finite loss or grad norm (--max-skipped-iterations "
                f"{config.max_skipped_iterations}); stopped without saving: the last checkpoint is "
                f"the last good one"
            )
    logger.iteration(
        state.iteration,
        state.consumed_samples,
        batch.global_batch_size * batch.seq_length,
        {k: v for k, v in losses.items() if k in LOGGED_LOSSES and math.isfinite(v)},
        optimizer.param_groups[0]["lr"],
        grad_norm if updated else None,
        None,
        batch.global_batch_size,
        not updated,
        time.perf_counter() - iteration_start,
    )
    return dict(losses, **{"grad norm": grad_norm, "skipped": not updated})


def _describe(losses: dict, grad_norm) -> str:
    values = [f"{name} {value:.4g}" for name, value in losses.items() if name in LOGGED_LOSSES]
    return ", ".join(values + [f"grad norm {grad_norm}"])


def _exit_reason(exits: ExitConfig, iteration: int, sigterm: _SigtermFlag) -> Optional[str]:
    """Why every rank stops after this iteration, or None. The same answer on every rank."""
    if exits.signal_handler and sigterm.any_rank():
        return "received SIGTERM (--exit-signal-handler)"
    if exits.interval and iteration % exits.interval == 0:
        return f"--exit-interval {exits.interval}"
    if exits.duration_in_mins and _minutes_running() > exits.duration_in_mins:
        return f"ran longer than --exit-duration-in-mins {exits.duration_in_mins}"
    return None

"""Every parallelism and precision wrapper, applied in one place and one order: ``parallelize()``.

model (one pipeline stage, fp32 or params_dtype, on its device)
  1. Float16Module        bf16/fp16 compute; must wrap before DDP so DDP's grad buffers see
                          the low-precision params it will reduce
  2. DDP                  megatron's DistributedDataParallel: contiguous grad buffers,
                          bucketed (optionally overlapped) reduce over data parallel ranks
  3. optimizer            megatron's (distributed) optimizer over DDP's buffers: fp32 main
                          params, sharded over DP with --use-distributed-optimizer
  4. schedule hooks       what megatron's pipeline schedules call: no_sync during
                          microbatches, grad reduce/param gather overlap, finalize (DP/PP/SP
                          reductions), loss scaling
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.module import Float16Module


@dataclass(frozen=True)
class DataParallelSettings:
    """How gradients and parameters move over data-parallel ranks."""

    use_distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False


@dataclass(frozen=True)
class OptimizerSettings:
    """Megatron's AdamW."""

    lr: float = 3e-4
    min_lr: float = 0.0
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0


@dataclass(frozen=True)
class ScheduleSettings:
    """Megatron's OptimizerParamScheduler, in iterations (its steps count samples)."""

    global_batch_size: int
    train_iters: int
    lr_decay_iters: int
    lr_warmup_iters: int = 0
    lr_decay_style: str = "cosine"


def parallelize(
    model, config, data_parallel: DataParallelSettings, optimizer: OptimizerSettings, schedule: ScheduleSettings
):
    """Steps 1 to 4 above, in that order, on one pipeline stage's model. Returns (model chunks,
    optimizer, scheduler)."""
    model_chunks = [_wrap_model(model, config, data_parallel)]
    megatron_optimizer, scheduler = _build_optimizer(model_chunks, data_parallel, optimizer, schedule)
    _install_schedule_hooks(model_chunks, megatron_optimizer, data_parallel)
    return model_chunks, megatron_optimizer, scheduler


def _wrap_model(model, config, data_parallel: DataParallelSettings):
    """Steps 1 and 2: the DDP-wrapped model chunk."""
    if config.bf16 or config.fp16:
        model = Float16Module(config, model)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,  # reduce in fp32: bf16 sums over many ranks lose bits
        overlap_grad_reduce=data_parallel.overlap_grad_reduce,
        overlap_param_gather=data_parallel.overlap_param_gather,
        use_distributed_optimizer=data_parallel.use_distributed_optimizer,
        check_for_nan_in_grad=False,  # non-finite steps are skipped and counted by the loop
        average_in_collective=True,
    )
    return DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)


def _build_optimizer(
    model_chunks, data_parallel: DataParallelSettings, settings: OptimizerSettings, schedule: ScheduleSettings
):
    """Step 3: megatron's AdamW and its LR/WD scheduler."""
    config = model_chunks[0].config
    optimizer_config = OptimizerConfig(
        optimizer="adam",
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        adam_eps=settings.adam_eps,
        clip_grad=settings.clip_grad,
        bf16=config.bf16,
        fp16=config.fp16,
        params_dtype=config.params_dtype,
        use_distributed_optimizer=data_parallel.use_distributed_optimizer,
        overlap_param_gather_with_optimizer_step=False,
    )
    optimizer = get_megatron_optimizer(optimizer_config, model_chunks)
    samples = schedule.global_batch_size
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if schedule.lr_warmup_iters else settings.lr,
        max_lr=settings.lr,
        min_lr=settings.min_lr,
        lr_warmup_steps=schedule.lr_warmup_iters * samples,
        lr_decay_steps=schedule.lr_decay_iters * samples,
        lr_decay_style=schedule.lr_decay_style,
        start_wd=settings.weight_decay,
        end_wd=settings.weight_decay,
        wd_incr_steps=schedule.train_iters * samples,
        wd_incr_style="constant",
    )
    return optimizer, scheduler


def _install_schedule_hooks(model_chunks, optimizer, data_parallel: DataParallelSettings):
    """Step 4: the config hooks megatron's get_forward_backward_func relies on."""
    config = model_chunks[0].config
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    if data_parallel.overlap_grad_reduce:
        config.no_sync_func = model_chunks[0].no_sync
        config.grad_sync_func = model_chunks[0].start_grad_sync
    if data_parallel.overlap_param_gather:
        config.param_sync_func = model_chunks[0].start_param_sync

"""The validated pretrain flags (arguments.py) as the typed configs each component takes: the model's
description and its build settings, the tokenizer, data parallelism, the optimizer and its schedule,
the loop (batch, validation, exits), checkpointing, and what runs after training. Built once by the
entry points, after parsing (the flags are parsed before torch and megatron-core are imported); the
namespace goes no further."""

from __future__ import annotations

import argparse

from megatron_free.config import (
    FreeTransformerConfig,
    PrecisionConfig,
    RecomputeConfig,
    StageLayout,
    build_model_config,
)
from megatron_free.data.tokenizers import Tokenizer, TokenizerConfig
from megatron_free.inference.toy_study import ToySamples
from megatron_free.model.description import ModelDescription
from megatron_free.parallel.distributed import ParallelConfig
from megatron_free.parallel.wrap import DataParallelSettings, OptimizerSettings, ScheduleSettings
from megatron_free.training.checkpointing import LoadConfig, SaveConfig
from megatron_free.training.loop import BatchConfig, ExitConfig, LoopConfig, ValidationConfig


def tokenizer_config(args: argparse.Namespace) -> TokenizerConfig:
    return TokenizerConfig(
        tokenizer_type=args.tokenizer_type,
        tokenizer_model=args.tokenizer_model,
        vocab_size=args.vocab_size,
        make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
    )


def model_description(args: argparse.Namespace, vocab_size: int, padded_vocab_size: int) -> ModelDescription:
    """What this run's checkpoints will say their weights are."""
    return ModelDescription(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups,
        kv_channels=args.kv_channels,
        max_position_embeddings=args.max_position_embeddings,
        rotary_base=args.rotary_base,
        norm_epsilon=args.norm_epsilon,
        tie_embeddings=not args.untie_embeddings_and_output_weights,
        vocab_size=vocab_size,
        padded_vocab_size=padded_vocab_size,
        tokenizer_type=args.tokenizer_type,
        tokenizer_model=args.tokenizer_model,
        baseline=args.baseline,
        latent_bits=args.latent_bits,
        free_bits=args.free_bits,
        injection_layer=args.injection_layer,
    )


def stage_layout(args: argparse.Namespace) -> StageLayout:
    return StageLayout(
        ParallelConfig(
            args.tensor_model_parallel_size,
            args.pipeline_model_parallel_size,
            args.context_parallel_size,
            args.sequence_parallel,
        ),
        first_stage_layers=args.decoder_first_pipeline_num_layers,
        last_stage_layers=args.decoder_last_pipeline_num_layers,
    )


def precision_config(args: argparse.Namespace) -> PrecisionConfig:
    return PrecisionConfig(
        bf16=args.bf16,
        fp16=args.fp16,
        fp8_format=args.fp8_format,
        fp8_recipe=args.fp8_recipe,
        fp8_margin=args.fp8_margin,
        fp8_amax_history_len=args.fp8_amax_history_len,
        fp8_amax_compute_algo=args.fp8_amax_compute_algo,
    )


def training_model_config(args: argparse.Namespace, description: ModelDescription) -> FreeTransformerConfig:
    """The model config of a training run (or its dry-run plan): its layout, precision and recomputation."""
    return build_model_config(
        description,
        stage_layout(args),
        precision_config(args),
        RecomputeConfig(args.recompute_granularity, args.recompute_method, args.recompute_num_layers),
        init_method_std=args.init_method_std,
        mapper_chunk_size=args.mapper_chunk_size,
    )


def data_parallel_settings(args: argparse.Namespace) -> DataParallelSettings:
    return DataParallelSettings(
        use_distributed_optimizer=args.use_distributed_optimizer,
        overlap_grad_reduce=args.overlap_grad_reduce,
        overlap_param_gather=args.overlap_param_gather,
    )


def optimizer_settings(args: argparse.Namespace) -> OptimizerSettings:
    return OptimizerSettings(
        lr=args.lr,
        min_lr=args.min_lr,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_eps=args.adam_eps,
        clip_grad=args.clip_grad,
    )


def schedule_settings(args: argparse.Namespace) -> ScheduleSettings:
    return ScheduleSettings(
        global_batch_size=args.global_batch_size,
        train_iters=args.train_iters,
        lr_decay_iters=args.lr_decay_iters,
        lr_warmup_iters=args.lr_warmup_iters,
        lr_decay_style=args.lr_decay_style,
    )


def _layout(args: argparse.Namespace) -> tuple[int, int, int]:
    return args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.data_parallel_size


def batch_config(args: argparse.Namespace) -> BatchConfig:
    return BatchConfig(
        global_batch_size=args.global_batch_size,
        micro_batch_size=args.micro_batch_size,
        num_microbatches=args.num_microbatches,
        seq_length=args.seq_length,
    )


def save_config(args: argparse.Namespace) -> SaveConfig | None:
    if not args.save:
        return None
    return SaveConfig(
        root=args.save,
        interval=args.save_interval,
        with_optimizer=not args.no_save_optim,
        with_rng=not args.no_save_rng,
        keep_last=args.keep_last_checkpoints,
        layout=_layout(args),
    )


def load_config(args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(
        path=args.load,
        finetune=args.finetune,
        with_optimizer=not args.no_load_optim,
        with_rng=not args.no_load_rng,
        override_scheduler=args.override_opt_param_scheduler,
        use_checkpoint_scheduler=args.use_checkpoint_opt_param_scheduler,
        layout=_layout(args),
    )


def loop_config(args: argparse.Namespace) -> LoopConfig:
    return LoopConfig(
        train_iters=args.train_iters,
        batch=batch_config(args),
        clip_grad=args.clip_grad,
        max_skipped_iterations=args.max_skipped_iterations,
        validation=ValidationConfig(
            interval=args.eval_interval or 0,
            iterations=args.eval_iters,
            baseline=args.baseline,
            latent_samples=args.eval_latent_samples,
            latent_bits=args.latent_bits,
        ),
        exits=ExitConfig(
            signal_handler=args.exit_signal_handler,
            interval=args.exit_interval,
            duration_in_mins=args.exit_duration_in_mins,
        ),
        save=save_config(args),
    )


def end_of_training_hooks(args: argparse.Namespace, tokenizer: Tokenizer) -> list:
    """What runs once the loop returns, each called as hook(model_chunks, logger, iteration):
    the toy main job's samples (--generate-samples with --toy-data)."""
    hooks = []
    if args.generate_samples and args.toy_data:
        latent_bits = None if args.baseline else args.latent_bits
        hooks.append(ToySamples(tokenizer, args.generate_samples, args.seed, latent_bits))
    return hooks

"""Pretrain a Free Transformer (or, with --baseline, the plain decoder) on megatron-core.

    torchrun --nproc-per-node 8 -m megatron_free.pretrain --config run.yaml [--flag value ...]
    python -m megatron_free.pretrain --config examples/toy_free_transformer.yaml   # one process

Flags follow Megatron-LM (see megatron_free/arguments.py); --help lists them. The flags are parsed
before torch and megatron-core are imported, so --help and flag errors answer at once.
Exit codes (megatron_free/errors.py): 0 done, 2 a usage, configuration, input or checkpoint error,
3 stopped on non-finite losses; under torchrun these are the workers' codes and torchrun exits 1.
"""

from __future__ import annotations

import os
import sys

from megatron_free.arguments import ArgumentError, parse_args
from megatron_free.errors import EXIT_NON_FINITE, EXIT_USAGE, report_error, silence_expected_warnings


def setup(args):
    """Everything before the loop: process groups, model, wrappers, optimizer, checkpoint,
    data. Returns (model_chunks, optimizer, scheduler, state, train_iter, valid_iter, tokenizer)."""
    from megatron.core import parallel_state

    from megatron_free.data.datasets import DataConfig, build_train_valid_datasets, microbatch_iterator
    from megatron_free.model.init import initialize_parameters
    from megatron_free.model.model import FreeTransformerModel
    from megatron_free.parallel.distributed import ParallelConfig, initialize_distributed
    from megatron_free.parallel.wrap import parallelize
    from megatron_free.run_config import (
        data_parallel_settings,
        load_config,
        model_description,
        optimizer_settings,
        schedule_settings,
        tokenizer_config,
        training_model_config,
    )
    from megatron_free.training.checkpointing import (
        claim_save_dir,
        load_baseline_decoder,
        load_checkpoint,
        resumed_padded_vocab_size,
    )
    from megatron_free.training.loop import TrainState
    from megatron_free.training.run_report import print_model_and_data

    try:
        tokenizer, vocab_size, padded_vocab_size = tokenizer_config(args).build(args.tensor_model_parallel_size)
    except ValueError as e:
        raise ArgumentError(str(e)) from None
    if args.load and os.path.exists(args.load):  # (a first run's --load = --save does not exist yet)
        padded_vocab_size = (
            resumed_padded_vocab_size(args.load, vocab_size, args.tensor_model_parallel_size) or padded_vocab_size
        )
    description = model_description(args, vocab_size, padded_vocab_size)
    config = training_model_config(args, description)
    initialize_distributed(
        ParallelConfig(
            args.tensor_model_parallel_size,
            args.pipeline_model_parallel_size,
            args.context_parallel_size,
            args.sequence_parallel,
        ),
        seed=args.seed,
        timeout_minutes=args.distributed_timeout_minutes,
    )
    model = FreeTransformerModel.from_description(description, config, transformer_impl=args.transformer_impl)
    initialize_parameters(model, args.seed)
    if args.init_from_baseline:
        load_baseline_decoder(args.init_from_baseline, model)
    model_chunks, optimizer, scheduler = parallelize(
        model, config, data_parallel_settings(args), optimizer_settings(args), schedule_settings(args)
    )

    state = TrainState()
    if args.save:  # one run at a time, never over checkpoints it does not resume from
        claim_save_dir(args.save, args.load, args.finetune)
    if args.load:
        state.iteration, state.consumed_samples = load_checkpoint(load_config(args), model_chunks, optimizer, scheduler)

    eval_samples = 0
    if args.eval_interval:
        evaluations = args.train_iters // args.eval_interval + 1
        eval_samples = evaluations * args.eval_iters * args.global_batch_size
    train_ds, valid_ds = build_train_valid_datasets(
        DataConfig(
            seed=args.seed,
            seq_length=args.seq_length,
            micro_batch_size=args.micro_batch_size,
            global_batch_size=args.global_batch_size,
            train_samples=args.train_iters * args.global_batch_size,
            eval_samples=eval_samples,
            data_path=args.data_path,
            split=args.split,
            data_cache_path=args.data_cache_path,
            mock_data=args.mock_data,
            toy_data=args.toy_data,
            num_workers=args.num_workers,
        ),
        tokenizer,
        padded_vocab_size,
    )
    print_model_and_data(args, model_chunks, train_ds, valid_ds)
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    train_iter = microbatch_iterator(
        train_ds, state.consumed_samples, args.micro_batch_size, dp_rank, dp_size, args.num_workers
    )
    valid_iter = None
    if valid_ds is not None and args.eval_interval:
        # A resumed run goes on with the validation samples after those already evaluated.
        valid_consumed = state.iteration // args.eval_interval * args.eval_iters * args.global_batch_size
        valid_iter = microbatch_iterator(valid_ds, valid_consumed, args.micro_batch_size, dp_rank, dp_size)

    return model_chunks, optimizer, scheduler, state, train_iter, valid_iter, tokenizer


def run(args) -> None:
    """Setup, the training loop and the end-of-run report. Prints, on the last rank: the
    arguments and the parallel layout, then (from setup) the parameter counts and the datasets,
    the log lines, the toy main job's samples, and a summary."""
    import time

    import torch

    from megatron_free.model.model import unwrap
    from megatron_free.planner import pipeline_stages
    from megatron_free.run_config import end_of_training_hooks, loop_config
    from megatron_free.training.flops import model_shape, training_flops_per_token
    from megatron_free.training.loop import train
    from megatron_free.training.metrics import TrainingLogger, print_rank_last
    from megatron_free.training.run_report import format_arguments, format_layout, format_summary

    print_rank_last(format_arguments(args))
    print_rank_last(format_layout(args, pipeline_stages(args)))
    model_chunks, optimizer, scheduler, state, train_iter, valid_iter, tokenizer = setup(args)
    if state.iteration >= args.train_iters:  # a finished run launched again: nothing to overwrite
        print_rank_last(
            f"nothing to train: --load {args.load} is already at iteration "
            f"{state.iteration}, --train-iters {args.train_iters}"
        )
        return
    shape = model_shape(unwrap(model_chunks[0]).description, args.seq_length)
    flops = training_flops_per_token(shape)["total"] * args.global_batch_size * args.seq_length
    peak = args.peak_tflops or (989.0 if torch.cuda.is_available() else None)
    logger = TrainingLogger(
        args.tensorboard_dir,
        args.log_interval,
        flops,
        torch.distributed.get_world_size(),
        peak,
        train_iters=args.train_iters,
    )
    start_iteration, start = state.iteration, time.perf_counter()
    try:
        train(loop_config(args), model_chunks, optimizer, scheduler, train_iter, valid_iter, logger, state)
        seconds = time.perf_counter() - start
        for hook in end_of_training_hooks(args, tokenizer):
            hook(model_chunks, logger, state.iteration)
    finally:
        logger.close()
    print_rank_last(
        format_summary(
            start_iteration=start_iteration,
            iteration=state.iteration,
            train_iters=args.train_iters,
            seconds=seconds,
            tokens_per_iteration=args.global_batch_size * args.seq_length,
            skipped=state.skipped_total,
            validation=logger.last_validation,
            saved=state.saved_checkpoint,
        )
    )


def main(argv=None) -> int:
    try:
        args = parse_args(argv, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except ArgumentError as e:
        return report_error(e, EXIT_USAGE)

    silence_expected_warnings()
    import torch

    from megatron_free.config import ConfigError
    from megatron_free.parallel.distributed import destroy_distributed, select_device
    from megatron_free.training.checkpointing import CheckpointError
    from megatron_free.training.loop import NonFiniteError

    try:
        if args.dry_run:  # the plan needs no device
            from megatron_free.planner import print_plan

            print_plan(args)
            return 0
        select_device()
        run(args)
    except (ArgumentError, ConfigError, CheckpointError, FileNotFoundError) as e:
        return report_error(e, EXIT_USAGE)
    except NonFiniteError as e:
        return report_error(e, EXIT_NON_FINITE)
    finally:
        if torch.distributed.is_initialized():
            destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())

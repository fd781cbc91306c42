"""megatron-free-convert-hf: a megatron_free checkpoint (any TP/PP layout) -> a HuggingFace folder.

    megatron-free-convert-hf --load runs/toy/checkpoints --output runs/toy/hf
    python -c "import transformers as t; t.AutoModelForCausalLM.from_pretrained('runs/toy/hf', trust_remote_code=True)"

A Free Transformer exports with its modeling code (trust_remote_code=True); a baseline exports as a
plain LlamaForCausalLM. Megatron's vocabulary padding is removed. The weights keep the checkpoint's
dtype (the run's: bfloat16 with --bf16, float16 with --fp16, float32 otherwise) unless --dtype says
otherwise; the last line printed names both.
"""

from __future__ import annotations

import argparse
import os
import sys

DTYPES = ("float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    from megatron_free.arguments import HelpFormatter

    p = argparse.ArgumentParser(
        prog="megatron-free-convert-hf",
        description="A megatron_free checkpoint (any TP/PP layout) -> a "
        "HuggingFace folder; the weights keep the checkpoint's dtype unless --dtype.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--load",
        required=True,
        help="Checkpoint: a run's --save directory (its latest checkpoint) or one iter_ directory.",
    )
    p.add_argument(
        "--output",
        required=True,
        help="The HuggingFace folder to write (atomically: a reader never sees a partial export).",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="Cast the floating-point weights to this dtype; default: the checkpoint's dtype.",
    )
    p.add_argument(
        "--max-shard-size",
        default="5GB",
        help="Largest safetensors file: bytes, or a size such as 5GB (10^9) or 4GiB (2^30).",
    )
    p.add_argument("--overwrite", action="store_true", help="Replace an existing --output; default: refuse.")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    from megatron_free.errors import EXIT_USAGE, report_error, silence_expected_warnings

    if os.path.exists(args.output) and not args.overwrite:  # before the minutes a large checkpoint takes to load
        return report_error(ValueError(f"--output {args.output} exists: pass --overwrite to replace it"), EXIT_USAGE)

    silence_expected_warnings()
    import torch

    from megatron_free.convert.export import export_hf
    from megatron_free.inference.checkpoint import load_for_inference
    from megatron_free.parallel.distributed import destroy_distributed, select_device
    from megatron_free.training.checkpointing import CheckpointError

    select_device()
    try:
        model, description, tokenizer, saved, _ = load_for_inference(args.load)
        dtype = saved if args.dtype is None else getattr(torch, args.dtype)
        vocab_size = tokenizer.vocab_size if tokenizer is not None else description.vocab_size
        path = export_hf(
            model.state_dict(),
            model.config,
            args.output,
            vocab_size=vocab_size,
            tokenizer=tokenizer,
            max_shard_size=args.max_shard_size,
            max_position_embeddings=description.max_position_embeddings,
            rope_theta=float(description.rotary_base),
            dtype=dtype,
            overwrite=args.overwrite,
        )
    except (CheckpointError, FileExistsError, ValueError) as e:
        return report_error(e, EXIT_USAGE)
    finally:
        if torch.distributed.is_initialized():
            destroy_distributed()
    written, source = _name(dtype), _name(saved)
    how = "the checkpoint's dtype" if dtype == saved else f"cast from the checkpoint's {source} by --dtype"
    print(f"wrote {path}: {written} weights ({how})")
    return 0


def _name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


if __name__ == "__main__":
    sys.exit(main())

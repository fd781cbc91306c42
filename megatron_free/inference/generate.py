"""Sampling from a megatron_free model under any TP/PP layout (full recompute per token, no KV
cache: for checks, demos and the toy study; the HuggingFace export has the KV cache).

Latent modes for the generated sequence:
  uniform           a fresh uniform Z per token, independently per sample (the prior)
  fixed-seed        uniform Z per token drawn from --latent-seed, shared by every sample
  posterior-prompt  the prompt's Z from the encoder over the prompt, then uniform Z per new token
or explicit ``codes`` ([b, prompt + new tokens]), e.g. one Z per group of rows (the toy study).

torch and megatron-core are imported inside the functions: `megatron-free-generate --help` and its
flag errors answer without them.
"""

from __future__ import annotations

import zlib

GENERATION_LATENTS = ("uniform", "fixed-seed", "posterior-prompt")


def _device():
    import torch

    return torch.cuda.current_device() if torch.cuda.is_available() else "cpu"


def _forward_logits(model_chunks, tokens, control, seeds):
    """Full-vocabulary logits of the last position on the last stage (None elsewhere)."""
    import torch
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    batch, length = tokens.shape
    position_ids = torch.arange(length, device=tokens.device).expand(batch, length)

    def forward_step(data_iterator, model):
        output = model(tokens, position_ids, None, latent_seeds=seeds, latent=control, runtime_gather_output=True)
        return output, lambda out, non_loss_data=False: out

    outputs = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([None]),
        model=model_chunks,
        num_microbatches=1,
        seq_length=length,
        micro_batch_size=batch,
        forward_only=True,
        collect_non_loss_data=True,
    )
    return outputs[0][:, -1].float() if parallel_state.is_pipeline_last_stage() else None


def _latent_codes_of_prompt(model_chunks):
    """The codes the encoder drew in the last forward, from whichever stage holds the latent."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_free.model.model import latent_modules

    codes = None
    for latent in latent_modules(model_chunks):
        codes = latent.last_codes.t().contiguous()
    found = torch.tensor([codes is not None], device=_device(), dtype=torch.long)
    shape = torch.tensor(codes.shape if codes is not None else (0, 0), device=_device())
    group = parallel_state.get_pipeline_model_parallel_group()
    dist.all_reduce(found, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(shape, op=dist.ReduceOp.MAX, group=group)
    buffer = codes if codes is not None else torch.zeros(tuple(shape.tolist()), dtype=torch.long, device=_device())
    dist.all_reduce(buffer, op=dist.ReduceOp.MAX, group=group)
    return buffer


def generate(
    model_chunks,
    prompt_ids,
    num_tokens: int,
    *,
    latent="uniform",
    latent_bits=None,
    seed=0,
    sampling_seed=None,
    temperature=1.0,
    top_k=0,
    vocab_size=None,
    codes=None,
):
    """Returns [b, prompt + num_tokens] token ids, identical on every rank. ``seed`` draws the
    latents, ``sampling_seed`` (default: seed + 1) the tokens. ``vocab_size``: the tokenizer's, so
    Megatron's padding rows of the output layer are never sampled. ``codes`` ([b, prompt +
    num_tokens] int64, same on every rank): the Z of every position, instead of drawing them as
    ``latent`` says (a Free Transformer only)."""
    import torch
    import torch.distributed as dist

    from megatron_free.model.latent import LatentControl
    from megatron_free.model.latent_rng import prior_codes, sample_seeds, sequence_positions

    if latent not in GENERATION_LATENTS:
        raise ValueError(f"--latent must be one of {GENERATION_LATENTS}, got {latent!r}")
    if sampling_seed is None:
        sampling_seed = seed + 1
    with torch.no_grad():
        for chunk in model_chunks:
            chunk.eval()
        device = _device()
        tokens = prompt_ids.to(device)
        batch, prompt_len = tokens.shape
        total = prompt_len + num_tokens
        # The HF export's generate(latent_seed=seed) draws the same Z (model/latent_rng.py).
        seeds = sample_seeds(seed, 1 if latent == "fixed-seed" else batch, device).expand(batch)
        control = LatentControl(mode="prior")
        if codes is not None:
            if tuple(codes.shape) != (batch, total):
                raise ValueError(
                    f"codes has shape {tuple(codes.shape)}, expected {(batch, total)} (rows x prompt + new tokens)"
                )
            control = None
        elif latent_bits is not None:
            codes = prior_codes(seeds, sequence_positions(batch, total, device), latent_bits).cpu()
            if latent == "posterior-prompt":
                _forward_logits(model_chunks, tokens, LatentControl(mode="posterior"), seeds)
                codes[:, :prompt_len] = _latent_codes_of_prompt(model_chunks).cpu()
            control = None
        sampler = torch.Generator(device="cpu").manual_seed(sampling_seed)
        for _ in range(num_tokens):
            length = tokens.shape[1]
            step_control = control or LatentControl(mode="given", codes=codes[:, :length])
            logits = _forward_logits(model_chunks, tokens, step_control, seeds)
            next_tokens = torch.zeros(batch, dtype=torch.long, device=device)
            if logits is not None:
                logits = logits[:, :vocab_size]
                if temperature == 0:
                    next_tokens = logits.argmax(-1)
                else:
                    logits = logits / temperature
                    if top_k:
                        kth = logits.topk(top_k, dim=-1).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    probs = torch.softmax(logits, -1).cpu()
                    next_tokens = torch.multinomial(probs, 1, generator=sampler).squeeze(-1).to(device)
            # The last stage's choice goes to every rank (all ranks run the same loop).
            dist.broadcast(next_tokens, src=dist.get_world_size() - 1)
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=1)
        return tokens.cpu()


def derived_seed(seed: int, *parts) -> int:
    """A seed of its own for each (seed, parts...), e.g. each prompt of a run."""
    return zlib.crc32(":".join(map(str, (seed, *parts))).encode()) & 0x7FFFFFFF


LATENT_HELP = (
    "Where the latent Z of the generated text comes from (a Free Transformer; a baseline has none): "
    "uniform: a fresh uniform Z per token, independently for every sample; "
    "fixed-seed: uniform Z per token drawn once from --latent-seed and shared by every sample of every "
    "prompt; posterior-prompt: the encoder's Z over the prompt, then uniform Z per new token, "
    "independently for every sample"
)


def build_parser():
    import argparse

    from megatron_free.arguments import HelpFormatter

    p = argparse.ArgumentParser(
        prog="megatron-free-generate",
        description="Sample text from a megatron_free checkpoint, one process (full recompute per token; "
        "the HuggingFace export has a KV cache). Prints one line per sample, or with --output "
        "writes one JSON object per sample.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--load",
        required=True,
        help="Checkpoint: a run's --save directory (its latest checkpoint) or one iter_ directory.",
    )
    p.add_argument("--prompt", action="append", default=[], help="A prompt; repeat the flag for more.")
    p.add_argument("--prompts-file", default=None, help="A file of prompts, one per line (blank lines skipped).")
    p.add_argument("--num-samples", type=int, default=1, help="Samples per prompt.")
    p.add_argument("--max-new-tokens", type=int, default=64, help="Tokens generated after each prompt.")
    p.add_argument("--latent", choices=GENERATION_LATENTS, default="posterior-prompt", help=LATENT_HELP)
    p.add_argument(
        "--latent-seed",
        type=int,
        default=0,
        help="Seed of the latents: the shared Z of fixed-seed; in the other modes, prompt p's "
        "samples draw theirs from a seed derived from this one and p.",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seed of the token sampling, separate from --latent-seed: prompt p's tokens are drawn "
        "from a seed derived from this one, p and --latent, so that no two prompts or modes "
        "share their sampling noise; the same flags give the same samples.",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="Softmax temperature; 0: greedy.")
    p.add_argument("--top-k", type=int, default=0, help="Sample among the k likeliest tokens only; 0: all.")
    p.add_argument(
        "--output",
        default=None,
        metavar="FILE.jsonl",
        help="Write the samples there (atomically), one JSON object per line: prompt, prompt_index, "
        "sample, latent, latent_seed, sampling_seed, text (prompt included), tokens, "
        "prompt_tokens; default: print the texts.",
    )
    p.add_argument("--overwrite", action="store_true", help="Replace an existing --output.")
    return p


def main(argv=None) -> int:
    """megatron-free-generate: prompts in, text out, from a megatron_free checkpoint.

        megatron-free-generate --load runs/toy_free_transformer/checkpoints --prompt "K>" \
            --num-samples 4 --latent fixed-seed --max-new-tokens 64 --output samples.jsonl
    """
    import os
    import sys

    args = build_parser().parse_args(argv)

    from megatron_free.errors import EXIT_USAGE, report_error, silence_expected_warnings

    prompts = list(args.prompt)
    try:
        if args.prompts_file:
            with open(args.prompts_file) as f:
                prompts += [line.rstrip("\n") for line in f if line.strip()]
        if not prompts:
            raise ValueError("give --prompt or --prompts-file")
        if args.output and os.path.exists(args.output) and not args.overwrite:
            raise ValueError(f"--output {args.output} exists: pass --overwrite to replace it")
    except (ValueError, OSError) as e:
        return report_error(e, EXIT_USAGE)

    silence_expected_warnings()
    import torch
    import torch.distributed as dist

    from megatron_free.inference.checkpoint import load_for_inference
    from megatron_free.parallel.distributed import destroy_distributed, select_device
    from megatron_free.training.checkpointing import CheckpointError

    select_device()
    try:
        model, description, tokenizer, *_ = load_for_inference(args.load)
        if tokenizer is None:
            raise ValueError(f"--load {args.load}: the run had no tokenizer (--mock-data): nothing to detokenize")
        latent_bits = None if description.baseline else description.latent_bits
        latent = None if description.baseline else args.latent
        records = []
        for index, prompt in enumerate(prompts):
            prompt_ids = tokenizer.tokenize(prompt)
            latent_seed = None
            if latent is not None:
                latent_seed = args.latent_seed if latent == "fixed-seed" else derived_seed(args.latent_seed, index)
            sampling_seed = derived_seed(args.seed, index, latent or "baseline")
            out = generate(
                [model],
                torch.tensor([prompt_ids] * args.num_samples),
                args.max_new_tokens,
                latent=args.latent,
                latent_bits=latent_bits,
                seed=latent_seed or 0,
                sampling_seed=sampling_seed,
                temperature=args.temperature,
                top_k=args.top_k,
                vocab_size=tokenizer.vocab_size,
            )
            for sample, row in enumerate(out.tolist()):
                records.append(
                    {
                        "prompt": prompt,
                        "prompt_index": index,
                        "sample": sample,
                        "latent": latent,
                        "latent_seed": latent_seed,
                        "sampling_seed": sampling_seed,
                        "text": tokenizer.detokenize(row),
                        "tokens": row,
                        "prompt_tokens": len(prompt_ids),
                    }
                )
        if args.output:
            _write_jsonl(args.output, records)
            print(f"wrote {len(records)} samples to {args.output}", file=sys.stderr)
        else:
            for record in records:
                print(record["text"])
    except (CheckpointError, ValueError, OSError) as e:
        return report_error(e, EXIT_USAGE)
    finally:
        if dist.is_initialized():
            destroy_distributed()
    return 0


def _write_jsonl(path: str, records: list[dict]) -> None:
    """All lines or nothing: written next to ``path``, then renamed onto it."""
    import json
    import os

    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


if __name__ == "__main__":
    import sys

    sys.exit(main())

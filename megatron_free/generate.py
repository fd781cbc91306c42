"""Sampling from a megatron_free model under any TP/PP layout (full recompute per token, no KV
cache: for checks, demos and the toy study; the HuggingFace export has the KV cache).

Latent modes for the generated sequence:
  uniform           a fresh uniform Z per token, independently per sample (the prior)
  fixed-seed        uniform Z per token drawn from --latent-seed, shared by every sample
  posterior-prompt  the prompt's Z from the encoder over the prompt, then uniform Z per new token
or explicit ``codes`` ([b, prompt + new tokens]), e.g. one Z per group of rows (the toy study).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_free.model.binary_mapper import uniform_codes
from megatron_free.model.latent import LatentControl

GENERATION_LATENTS = ("uniform", "fixed-seed", "posterior-prompt")


def _device():
    return torch.cuda.current_device() if torch.cuda.is_available() else "cpu"


def _forward_logits(model_chunks, tokens, control: LatentControl, seeds) -> torch.Tensor | None:
    """Full-vocabulary logits of the last position on the last stage (None elsewhere)."""
    batch, length = tokens.shape
    position_ids = torch.arange(length, device=tokens.device).expand(batch, length)

    def forward_step(data_iterator, model):
        output = model(tokens, position_ids, None, latent_seeds=seeds, latent=control,
                       runtime_gather_output=True)
        return output, lambda out, non_loss_data=False: out

    outputs = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter([None]), model=model_chunks,
        num_microbatches=1, seq_length=length, micro_batch_size=batch, forward_only=True,
        collect_non_loss_data=True,
    )
    return outputs[0][:, -1].float() if parallel_state.is_pipeline_last_stage() else None


def _latent_codes_of_prompt(model_chunks) -> torch.Tensor:
    """The codes the encoder drew in the last forward, from whichever stage holds the latent."""
    codes = None
    for chunk in model_chunks:
        for module in chunk.modules():
            if getattr(module, "last_codes", None) is not None:
                codes = module.last_codes.t().contiguous()
    found = torch.tensor([codes is not None], device=_device(), dtype=torch.long)
    shape = torch.tensor(codes.shape if codes is not None else (0, 0), device=_device())
    group = parallel_state.get_pipeline_model_parallel_group()
    dist.all_reduce(found, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(shape, op=dist.ReduceOp.MAX, group=group)
    buffer = codes if codes is not None else torch.zeros(tuple(shape.tolist()), dtype=torch.long,
                                                         device=_device())
    dist.all_reduce(buffer, op=dist.ReduceOp.MAX, group=group)
    return buffer


@torch.no_grad()
def generate(model_chunks, prompt_ids: torch.Tensor, num_tokens: int, *, latent="uniform",
             latent_bits=None, seed=0, temperature=1.0, top_k=0, vocab_size=None,
             codes=None) -> torch.Tensor:
    """Returns [b, prompt + num_tokens] token ids, identical on every rank. ``vocab_size``: the
    tokenizer's, so Megatron's padding rows of the output layer are never sampled. ``codes``
    ([b, prompt + num_tokens] int64, same on every rank): the Z of every position, instead of
    drawing them as ``latent`` says (a Free Transformer only)."""
    for chunk in model_chunks:
        chunk.eval()
    if latent not in GENERATION_LATENTS:
        raise ValueError(f"--latent must be one of {GENERATION_LATENTS}, got {latent!r}")
    device = _device()
    tokens = prompt_ids.to(device)
    batch, prompt_len = tokens.shape
    total = prompt_len + num_tokens
    seeds = torch.arange(batch, device=device) + seed
    control = LatentControl(mode="prior")
    if codes is not None:
        if tuple(codes.shape) != (batch, total):
            raise ValueError(f"codes has shape {tuple(codes.shape)}, expected {(batch, total)} "
                             f"(rows x prompt + new tokens)")
        control = None
    elif latent_bits is not None:
        gen = torch.Generator().manual_seed(seed)
        if latent == "fixed-seed":
            codes = uniform_codes((1, total), latent_bits, generator=gen).expand(batch, total)
        else:
            codes = uniform_codes((batch, total), latent_bits, generator=gen)
        if latent == "posterior-prompt":
            _forward_logits(model_chunks, tokens, LatentControl(mode="posterior"), seeds)
            codes = codes.clone()
            codes[:, :prompt_len] = _latent_codes_of_prompt(model_chunks).cpu()
        control = None
    sampler = torch.Generator(device="cpu").manual_seed(seed + 1)
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


def main(argv=None) -> int:
    """megatron-free-generate: prompts in, text out, from a megatron_free checkpoint.

        megatron-free-generate --load runs/toy_free_transformer/checkpoints --prompt "K>" \
            --num-samples 4 --latent fixed-seed --max-new-tokens 64
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="megatron-free-generate", description="Sample from a checkpoint.")
    parser.add_argument("--load", required=True, help="checkpoint root (--save of the run) or an iter_ dir")
    parser.add_argument("--prompt", action="append", default=[], help="repeatable")
    parser.add_argument("--prompts-file", help="one prompt per line")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--latent", choices=GENERATION_LATENTS, default="posterior-prompt")
    parser.add_argument("--latent-seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=0)
    args = parser.parse_args(argv)

    from megatron_free.convert.from_checkpoint import load_unsplit_model
    from megatron_free.parallel.distributed import destroy_distributed
    from megatron_free.training.checkpointing import CheckpointError

    prompts = list(args.prompt)
    try:
        if args.prompts_file:
            with open(args.prompts_file) as f:
                prompts += [line.rstrip("\n") for line in f if line.strip()]
        if not prompts:
            raise ValueError("give --prompt or --prompts-file")
        model, run_args, tokenizer = load_unsplit_model(args.load)
        if tokenizer is None:
            raise ValueError(f"--load {args.load}: the run had no tokenizer (--mock-data): nothing to detokenize")
        latent_bits = None if run_args.baseline else run_args.latent_bits
        for prompt in prompts:
            ids = torch.tensor([tokenizer.tokenize(prompt)] * args.num_samples)
            out = generate([model], ids, args.max_new_tokens, latent=args.latent,
                           latent_bits=latent_bits, seed=args.latent_seed,
                           temperature=args.temperature, top_k=args.top_k,
                           vocab_size=tokenizer.vocab_size)
            for row in out:
                print(tokenizer.detokenize(row.tolist()))
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            destroy_distributed()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())

"""The Free Transformer for lm-evaluation-harness: a HuggingFace export, with its latent handled as the
model is meant to be used, and without leakage.

    megatron-free-lm-eval --model free_transformer \\
        --model_args pretrained=runs/toy_hf,latent_samples=4,latent_seed=0 --tasks ...

(``megatron-free-lm-eval`` is lm-eval's own command line with this model registered; in Python,
importing this module registers it for ``lm_eval.simple_evaluate(model="free_transformer", ...)``.)

Where each token's Z comes from:
  generate_until          the prompt's Z from the encoder over the prompt alone; each new token a fresh
                          uniform Z (as the export's generate()).
  loglikelihood           the context's Z from the encoder over the context alone (never over the
                          continuation); the continuation's Z from the uniform prior. With
                          ``context_latent=prior`` the context's Z is uniform too.
  loglikelihood_rolling   every Z from the prior.
With ``latent_samples=K`` each likelihood is estimated from K draws of Z, averaged in probability space
(log-mean-exp). Each draw's seed is a hash of (``latent_seed``, draw, the context's tokens), so a context
gets the same Z in any batch, in any order of requests, and every continuation of one context is scored
under the same Z (the probabilities of all continuations of a context then sum to 1).

model_args: pretrained (the export folder), dtype (float32 | bfloat16 | float16 | auto = the export's),
device (cpu, cuda, cuda:N; default cuda if available), batch_size, max_length (default the export's
max_position_embeddings), max_gen_toks (256), latent_samples (1), latent_seed (0), context_latent
(posterior | prior).
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from megatron_free.model.latent_rng import prior_codes

CONTEXT_LATENTS = ("posterior", "prior")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def request_seed(latent_seed: int, draw: int, context: list[int]) -> int:
    """A 63-bit seed from the latent seed, the draw's index and the context's tokens only."""
    digest = hashlib.blake2b(f"{latent_seed}:{draw}:{','.join(map(str, context))}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


def log_mean_exp(values: list[float]) -> float:
    """log((1/K) sum_k exp(v_k)), stable."""
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


def _left_pad(rows: list[list[int]], pad: int):
    """(ids [b, L], attention_mask [b, L], pad counts) with every row right-aligned."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, length - len(row) :] = 1
    return ids, mask, [length - len(r) for r in rows]


@register_model("free_transformer")
class FreeTransformerLM(TemplateLM):
    def __init__(
        self,
        pretrained: str,
        dtype: str = "float32",
        device: str | None = None,
        batch_size=1,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        latent_samples: int = 1,
        latent_seed: int = 0,
        context_latent: str = "posterior",
        trust_remote_code: bool = True,
        **kwargs,
    ):
        super().__init__()
        import transformers
        from packaging.version import Version
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if context_latent not in CONTEXT_LATENTS:
            raise ValueError(f"context_latent must be one of {CONTEXT_LATENTS}, got {context_latent!r}")
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size: give a number (the Free Transformer model has no automatic batch size)")
        if dtype != "auto" and dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto or one of {tuple(_DTYPES)}, got {dtype!r}")
        self.latent_samples = int(latent_samples)
        if self.latent_samples < 1:
            raise ValueError(f"latent_samples must be >= 1, got {latent_samples}")
        self.latent_seed = int(latent_seed)
        self.context_latent = context_latent
        self.batch_size_per_call = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            # lm_eval's --device defaults to cuda: without a GPU fall back to the CPU, as its hf model does.
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        # from_pretrained's dtype is torch_dtype before transformers 4.56, which warns on the old name.
        dtype_name = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
        self.model = (
            AutoModelForCausalLM.from_pretrained(
                pretrained,
                trust_remote_code=trust_remote_code,
                **{dtype_name: "auto" if dtype == "auto" else _DTYPES[dtype]},
            )
            .to(self._device)
            .eval()
        )
        if getattr(self.model.config, "model_type", None) != "free_transformer":
            raise ValueError(
                f"pretrained={pretrained} is a {self.model.config.model_type!r} model, not a Free "
                "Transformer export: evaluate it with --model hf"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        self.max_length = int(max_length or self.model.config.max_position_embeddings)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id

    # -- tokens ------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def device(self):
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # Pretraining sees documents separated by end-of-document tokens, no BOS: none is added.
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # -- likelihoods -------------------------------------------------------------------------------
    def _batches(self, items):
        for start in range(0, len(items), self.batch_size_per_call):
            yield items[start : start + self.batch_size_per_call]

    @torch.no_grad()
    def _context_codes(self, contexts: list[list[int]], seeds: torch.Tensor) -> list[torch.Tensor]:
        """Each context's codes [len(context)], from the encoder over that context alone."""
        ids, mask, pads = _left_pad(contexts, self.pad_id)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            latent_mode="posterior",
            latent_seed=seeds.to(self.device),
            use_cache=False,
        )
        return [out.latent_codes[i, pad:] for i, pad in enumerate(pads)]

    @torch.no_grad()
    def token_log_probs(
        self, pairs: list[tuple[list[int], list[int]]], draw: int = 0, context_latent: str | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each (context, continuation): the log-probability of every continuation token and whether
        it was the argmax, under draw ``draw`` of Z (context_latent: this model's by default)."""
        context_latent = context_latent or self.context_latent
        seeds = torch.tensor([request_seed(self.latent_seed, draw, ctx) for ctx, _ in pairs])
        ids, mask, pads = _left_pad([ctx + cont for ctx, cont in pairs], self.pad_id)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        codes = prior_codes(seeds, positions, self.model.config.latent_bits)
        if context_latent == "posterior":
            for i, context_codes in enumerate(self._context_codes([ctx for ctx, _ in pairs], seeds)):
                codes[i, pads[i] : pads[i] + len(pairs[i][0])] = context_codes.cpu()
        logits = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            latent_mode="given",
            latent_codes=codes.to(self.device),
            use_cache=False,
        ).logits
        log_probs = F.log_softmax(logits.float(), dim=-1).cpu()
        scores = []
        for i, (_, cont) in enumerate(pairs):
            start = ids.shape[1] - len(cont)  # the logits at position p predict token p + 1
            predicted = log_probs[i, start - 1 : ids.shape[1] - 1]
            targets = ids[i, start:]
            scores.append((predicted.gather(-1, targets[:, None])[:, 0], predicted.argmax(-1) == targets))
        return scores

    def _score(self, pairs, context_latent):
        """(log-mean-exp over the K draws of the continuation's log-probability, greedy under the first
        draw) for each (context, continuation)."""
        draws = [self.token_log_probs(pairs, k, context_latent) for k in range(self.latent_samples)]
        return [
            (log_mean_exp([d[i][0].sum().item() for d in draws]), bool(draws[0][i][1].all())) for i in range(len(pairs))
        ]

    def _truncated(self, context: list[int], continuation: list[int]):
        """Keep the last max_length tokens of context + continuation (as lm-eval's HF model)."""
        whole = (context + continuation)[-self.max_length :]
        if len(continuation) >= len(whole):
            raise ValueError(
                f"a continuation of {len(continuation)} tokens leaves no context within max_length {self.max_length}"
            )
        return whole[: len(whole) - len(continuation)], continuation

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        pairs = [self._truncated(ctx, cont) for _, ctx, cont in requests]
        results = []
        for start in range(0, len(pairs), self.batch_size_per_call):
            scores = self._score(pairs[start : start + self.batch_size_per_call], self.context_latent)
            for (request, _, _), score in zip(requests[start:], scores):
                self.cache_hook.add_partial("loglikelihood", request, score)
            results.extend(scores)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in requests:
            (text,) = request.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    self.tok_encode(text), prefix_token=self.eot_token_id, max_seq_len=self.max_length, context_len=1
                )
            ]
            total = 0.0
            for batch in self._batches(windows):
                total += sum(score for score, _ in self._score(batch, "prior"))
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return results

    # -- generation --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # requests that share their generation kwargs share batches
        for index, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        for indices in groups.values():
            for batch in self._batches(indices):
                texts = self._generate([requests[i].args[0] for i in batch], requests[batch[0]].args[1])
                for i, text in zip(batch, texts):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return results

    def _generate(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        """Left-padded batch generation; each prompt's Z from the encoder over that prompt alone."""
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        eos = self.tok_decode([self.eot_token_id])
        max_new = int(kwargs.pop("max_gen_toks", kwargs.pop("max_new_tokens", self.max_gen_toks)))
        if max_new >= self.max_length:
            raise ValueError(f"max_gen_toks {max_new} leaves no room for a prompt within max_length {self.max_length}")
        temperature = float(kwargs.pop("temperature", 0.0))
        do_sample = bool(kwargs.pop("do_sample", temperature > 0.0))
        sampling = dict(do_sample=True, temperature=temperature, **kwargs) if do_sample else dict(do_sample=False)
        prompts = [self.tok_encode(c)[-(self.max_length - max_new) :] or [self.eot_token_id] for c in contexts]
        ids, mask, _ = _left_pad(prompts, self.pad_id)
        seeds = torch.tensor([request_seed(self.latent_seed, 0, p) for p in prompts])
        output = self.model.generate(
            ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=max_new,
            latent_mode="posterior",
            latent_seed=seeds.to(self.device),
            pad_token_id=self.pad_id,
            **sampling,
        )
        texts = []
        for row in output[:, ids.shape[1] :].tolist():
            text = self.tok_decode(row)
            for stop in until + ([eos] if eos else []):
                if stop in text:
                    text = text[: text.index(stop)]
            texts.append(text)
        return texts

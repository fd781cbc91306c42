"""The Free Transformer (Fleuret 2025) for HuggingFace transformers, copied into every exported folder.

Imports only torch, transformers and latent_rng.py beside it (megatron_free/model/latent_rng.py, copied by
the export: the random numbers of training), loaded with ``trust_remote_code=True``:

    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)  # v5 reads config.json too
    out = model.generate(ids, max_new_tokens=32, latent_seed=0)                      # posterior prompt Z
    out = model.generate(ids, max_new_tokens=32, latent_mode="prior", latent_seed=0)  # uniform Z everywhere
    out = model.generate(ids, max_new_tokens=32, latent_codes=codes)                  # given Z, [b, s_total]

Model (L blocks, H latent bits, C = 2^H codes), as the megatron model that trained it:
  X_{L/2} = blocks 1 .. L/2 (causal, Llama-style);
  bit logits o = readout(RMSNorm(encoder(q = zeta repeated, kv = X_{L/2}))), the encoder NON-causal;
  codes d_t in [0, C): bit h of d_t has weight 2^h (B_{t,h} ~ Bernoulli(sigmoid(o_{t,h})));
  R_t = post_sampler[d_t]; block L/2+1 takes q (and its residual) from X, k/v from X + R;
  blocks L/2+2 .. L, final RMSNorm, lm_head.

Where each token's code comes from (``latent_mode``):
  "posterior" (default; config.default_latent_mode can make "prior" the default): the first forward of a
  sequence (the prompt, no cache yet, no codes known) runs
      the encoder over it, non-causal over the prompt only; every later token gets a fresh uniform code.
  "prior": every token a uniform code.
  "given": ``latent_codes`` [b, s_total] (columns aligned with input_ids, padding included) gives every
      code. It is the default when latent_codes covers every position of the call.
Positions that ``latent_codes`` covers always keep those codes: generate() carries the codes it used so
far in ``latent_codes``, so a step-by-step generation without a cache (use_cache=False) sees the same Z as
one with a cache. The output's ``latent_codes`` holds the codes of every position known so far.

Randomness: with ``latent_seed`` (an int, or a [b] tensor of per-sample seeds) each draw is a hash of
(seed, sample, position, bit): the same Z on any device, with or without the cache, in any chunking, and
for a left-padded sample the same as unpadded (positions come from the attention mask). Samples that share
a seed tensor value share their Z (e.g. ``num_return_sequences`` copies of one prompt). With an int seed
the batch index is hashed in, so samples differ. Without a seed, torch's global RNG picks the seeds.

Padding: left-padded batches with an attention_mask are supported (prefill and generation); the encoder
ignores padded keys. Not supported: a 4D attention mask, static / compiled caches, and beam search
(generate() does not reorder the carried latent_codes with the beams).
"""

from dataclasses import dataclass, fields
from typing import Optional, Union

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_free_transformer import FreeTransformerConfig
from .latent_rng import posterior_codes, prior_codes, sample_seeds

LATENT_MODES = ("posterior", "prior", "given")
_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
# The KV cache's name in forward arguments and outputs: "cache" since transformers 5.24 (which warns
# on the old name), "past_key_values" before. Detected from the library's own output class.
CACHE_NAME = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


# Random numbers: latent_rng.py beside this file (the export copies megatron_free/model/latent_rng.py),
# the stateless hash of (seed, position, bit) the training run drew its codes with.
def _per_sample_seeds(latent_seed, batch_size: int, device) -> torch.Tensor:
    """[b] int64 seeds: a [b] tensor as given; a scalar seed hashed with each sample's batch index."""
    if latent_seed is None:
        return torch.randint(0, 2**62, (batch_size,), dtype=torch.long).to(device)
    seed = torch.as_tensor(latent_seed, dtype=torch.long, device=device)
    if seed.dim() == 0:
        return sample_seeds(seed, batch_size, device)
    seed = seed.reshape(-1)
    if seed.numel() != batch_size:
        raise ValueError(f"latent_seed has {seed.numel()} seeds for a batch of {batch_size}")
    return seed


# --------------------------------------------------------------------------------------------------
# Layers: Llama's names and math; attention takes its queries and keys/values from two inputs.
class FreeTransformerRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


def _rotary_cos_sin(position_ids, head_dim, theta, dtype):
    """RoPE as HF Llama (non-interleaved, rotate_half): cos, sin [b, s, head_dim]."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim)
    )
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary(x, cos, sin):
    """x [b, heads, s, d]; cos, sin [b, s, d]."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


class FreeTransformerAttention(nn.Module):
    """Grouped-query attention with RoPE; queries from ``query_states``, keys/values from ``kv_states``."""

    def __init__(self, config: FreeTransformerConfig, layer_idx: Optional[int]):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(self, query_states, kv_states, cos, sin, mask, is_causal, cache=None):
        b, s, _ = query_states.shape
        q = self.q_proj(query_states).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(kv_states).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(kv_states).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:  # repeat K/V per query head (SDPA's enable_gqa needs torch >= 2.5)
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class FreeTransformerMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class FreeTransformerDecoderLayer(nn.Module):
    """Pre-norm block: h + Attn(q=norm(h), kv=norm(kv_input or h)), then h + MLP(norm(h))."""

    def __init__(self, config, layer_idx: Optional[int]):
        super().__init__()
        self.input_layernorm = FreeTransformerRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = FreeTransformerAttention(config, layer_idx)
        self.post_attention_layernorm = FreeTransformerRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = FreeTransformerMLP(config)

    def forward(self, hidden_states, cos, sin, mask, is_causal, cache=None, kv_input=None):
        normed = self.input_layernorm(hidden_states)
        kv_normed = normed if kv_input is None else self.input_layernorm(kv_input)
        hidden_states = hidden_states + self.self_attn(normed, kv_normed, cos, sin, mask, is_causal, cache)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class FreeTransformerLatent(nn.Module):
    """Encoder (one non-causal block with the constant query zeta), bit readout and post-sampler."""

    def __init__(self, config):
        super().__init__()
        self.zeta = nn.Parameter(torch.zeros(config.hidden_size))
        self.encoder = FreeTransformerDecoderLayer(config, layer_idx=None)
        self.readout_norm = FreeTransformerRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.readout = nn.Linear(config.hidden_size, config.latent_bits, bias=False)
        self.post_sampler = nn.Parameter(torch.zeros(config.num_codes, config.hidden_size))

    def bit_logits(self, hidden_states, cos, sin, key_padding_mask=None):
        """o [b, s, H] for X_{L/2} [b, s, D]; key_padding_mask [b, s] (True = a real token) or None."""
        queries = self.zeta.to(hidden_states.dtype).expand_as(hidden_states)
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :].bool()
        encoded = self.encoder(queries, cos, sin, mask, is_causal=False, kv_input=hidden_states)
        return self.readout(self.readout_norm(encoded))

    def post_sample(self, codes):
        """R = post_sampler[codes]: [b, s] -> [b, s, D]."""
        return F.embedding(codes, self.post_sampler)


# --------------------------------------------------------------------------------------------------
@dataclass
class FreeTransformerOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast plus the latent: ``latent_codes`` [b, s_known] (every position known so
    far, or this call's positions when earlier codes were not passed) and ``latent_bit_logits`` [b, s, H]
    (the encoder's, when it ran)."""

    latent_codes: Optional[torch.LongTensor] = None
    latent_bit_logits: Optional[torch.FloatTensor] = None


class FreeTransformerPreTrainedModel(PreTrainedModel):
    config_class = FreeTransformerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["FreeTransformerDecoderLayer"]
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_sdpa = True

    def _init_weights(self, module):
        """Fresh weights (only for parameters a checkpoint did not provide)."""
        std = self.config.initializer_range

        def init(param, fill=None):
            if getattr(param, "_is_hf_initialized", False):
                return
            with torch.no_grad():
                param.fill_(fill) if fill is not None else param.normal_(0.0, std)

        if isinstance(module, (nn.Linear, nn.Embedding)):
            init(module.weight)
        elif isinstance(module, FreeTransformerRMSNorm):
            init(module.weight, 1.0)
        elif isinstance(module, FreeTransformerLatent):
            init(module.zeta)
            init(module.post_sampler)


class FreeTransformerModel(FreeTransformerPreTrainedModel):
    """Embedding, decoder blocks (block ``injection_layer`` carries the latent) and the final norm."""

    def __init__(self, config: FreeTransformerConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(FreeTransformerDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.latent = FreeTransformerLatent(config)
        self.norm = FreeTransformerRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        latent_mode=None,
        latent_codes=None,
        latent_seed=None,
        **kwargs,
    ):
        """Returns (hidden_states [b, s, D], cache, latent_codes, latent_bit_logits)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, s = hidden.shape[:2]
        device = hidden.device
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is not None and not isinstance(cache, Cache):
            raise TypeError(
                f"{CACHE_NAME} must be a transformers Cache (e.g. DynamicCache), got {type(cache).__name__}"
            )
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        if not use_cache:
            cache = None if past == 0 else cache

        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[1] != past + s:
                raise ValueError(
                    f"attention_mask must be 2D [b, {past + s}] (cached + new tokens), "
                    f"got shape {tuple(attention_mask.shape)}"
                )
            attention_mask = attention_mask.bool()
            if bool(attention_mask.all()):  # one host sync per call, for SDPA's fused causal path
                attention_mask = None
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + s, device=device)[None].expand(b, s)
        position_ids = position_ids.to(device).expand(b, s)
        cos, sin = _rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, hidden.dtype)
        mask, is_causal = self._decoder_mask(attention_mask, b, s, past, device)

        injection = self.config.injection_layer - 1
        codes = bit_logits = None
        for index, layer in enumerate(self.layers):
            kv_input = None
            if index == injection:
                codes, bit_logits = self._chunk_codes(
                    hidden, latent_mode, latent_codes, latent_seed, past, position_ids, attention_mask, cos, sin
                )
                kv_input = hidden + self.latent.post_sample(codes).to(hidden.dtype)
            hidden = layer(hidden, cos, sin, mask, is_causal, cache, kv_input)
        hidden = self.norm(hidden)

        if latent_codes is not None and latent_codes.shape[1] >= past:
            known = latent_codes[:, : past + s].to(codes.device)
            codes = torch.cat([known[:, :past], codes], dim=1) if known.shape[1] < past + s else known
        return hidden, cache, codes, bit_logits

    @staticmethod
    def _decoder_mask(attention_mask, b, s, past, device):
        """(mask, is_causal) for SDPA: a bool mask [b, 1, s, past + s] only when padding needs one."""
        if attention_mask is None:
            if past == 0:
                return None, True
            if s == 1:
                return None, False
        query_pos = torch.arange(past, past + s, device=device)[:, None]
        key_pos = torch.arange(past + s, device=device)[None, :]
        allowed = (key_pos <= query_pos)[None, None]
        if attention_mask is not None:
            # A padded query keeps its own key so that no row is empty (SDPA would return NaN).
            allowed = allowed & attention_mask[:, None, None, :] | (key_pos == query_pos)[None, None]
        return allowed.expand(b, 1, s, past + s), False

    def _chunk_codes(
        self, hidden, latent_mode, latent_codes, latent_seed, past, position_ids, attention_mask, cos, sin
    ):
        """Codes [b, s] of this call's positions, and the encoder's bit logits when it ran."""
        b, s = hidden.shape[:2]
        num_known = 0 if latent_codes is None else latent_codes.shape[1]
        if latent_mode is None:
            latent_mode = "given" if num_known >= past + s else self.config.default_latent_mode
        if latent_mode not in LATENT_MODES:
            raise ValueError(f"latent_mode must be one of {LATENT_MODES}, got {latent_mode!r}")
        if latent_mode == "given" and num_known < past + s:
            raise ValueError(
                f"latent_mode 'given' needs latent_codes [b, >= {past + s}] "
                f"(one code per position so far), got {num_known} columns"
            )
        num_given = min(max(num_known - past, 0), s)
        if num_given == s:
            return latent_codes[:, past : past + s].to(hidden.device).long(), None
        seeds = _per_sample_seeds(latent_seed, b, hidden.device)
        if latent_mode == "posterior" and past == 0 and num_known == 0:
            # The prompt: its Z from the encoder, non-causal over the prompt only.
            key_padding = None if attention_mask is None else attention_mask[:, :s]
            bit_logits = self.latent.bit_logits(hidden, cos, sin, key_padding)
            return posterior_codes(bit_logits, seeds, position_ids), bit_logits
        fresh = prior_codes(seeds, position_ids[:, num_given:], self.config.latent_bits)
        if num_given:
            fresh = torch.cat([latent_codes[:, past : past + num_given].to(hidden.device).long(), fresh], 1)
        return fresh, None


class FreeTransformerForCausalLM(FreeTransformerPreTrainedModel, GenerationMixin):
    """The Free Transformer with its output layer; generate() accepts latent_mode, latent_codes and
    latent_seed as model kwargs (see the module docstring)."""

    if _TRANSFORMERS_MAJOR >= 5:
        _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    else:
        _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: FreeTransformerConfig):
        super().__init__(config)
        self.model = FreeTransformerModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cache: Optional[Cache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        latent_mode: Optional[str] = None,
        latent_codes: Optional[torch.LongTensor] = None,
        latent_seed: Optional[Union[int, torch.Tensor]] = None,
        return_dict: Optional[bool] = None,
        past_key_values: Optional[Cache] = None,
        **kwargs,
    ):
        """The KV cache comes as ``cache`` (transformers >= 5.24's name) or ``past_key_values`` (older
        versions' name) and is returned under the installed version's name (``CACHE_NAME``)."""
        if cache is not None and past_key_values is not None:
            raise ValueError("give the KV cache as cache or as past_key_values, not both")
        hidden, cache, codes, bit_logits = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=past_key_values if cache is None else cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            latent_mode=latent_mode,
            latent_codes=latent_codes,
            latent_seed=latent_seed,
        )
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        output = FreeTransformerOutput(
            loss=loss, logits=logits, latent_codes=codes, latent_bit_logits=bit_logits, **{CACHE_NAME: cache}
        )
        return output if return_dict is not False else output.to_tuple()

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        """Carries the codes used so far, so the next step (cached or recomputed) reuses them."""
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        codes = getattr(outputs, "latent_codes", None)
        known = model_kwargs.get("latent_codes")
        if codes is not None and (known is None or codes.shape[1] > known.shape[1]):
            model_kwargs["latent_codes"] = codes
        return model_kwargs


__all__ = ["FreeTransformerForCausalLM", "FreeTransformerModel", "FreeTransformerPreTrainedModel"]

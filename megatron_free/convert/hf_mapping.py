"""Megatron <-> HuggingFace checkpoint key mapping, as pure functions on CPU tensors.

    hf_sd = megatron_to_hf(model.state_dict(), config, vocab_size=tokenizer.vocab_size)
    megatron_sd = hf_to_megatron(hf_sd, config, padded_vocab_size=...)
    config_json = hf_config_from(config, vocab_size, max_position_embeddings, tied, eos_token_id=...)

The state dict is a whole TP1/PP1 model's (``model.state_dict()``), with the local or the Transformer
Engine layer spec (TE fuses the pre-norms into ``linear_qkv.layer_norm_weight`` and
``linear_fc1.layer_norm_weight``). Megatron layouts that need more than a rename:
  * ``linear_qkv.weight`` rows come per KV group g: [the g-th group's query heads; its key; its value],
    each head head_dim rows; HF keeps q_proj, k_proj, v_proj apart (query head h uses kv head h // (nq/nkv)).
  * ``linear_fc1.weight`` is [gate; up] (SwiGLU); HF has gate_proj and up_proj.
  * the word embedding and output layer carry Megatron's vocabulary padding, dropped on export.

HF names: Llama's (model.embed_tokens, model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head) plus the latent of the Free
Transformer under model.latent.{zeta, encoder.<Llama layer names>, readout_norm, readout, post_sampler}.
A baseline (config.baseline) maps to a plain LlamaForCausalLM.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

__all__ = ["megatron_to_hf", "hf_to_megatron", "hf_config_from", "FREE_TRANSFORMER_AUTO_MAP"]

FREE_TRANSFORMER_AUTO_MAP = {
    "AutoConfig": "configuration_free_transformer.FreeTransformerConfig",
    "AutoModel": "modeling_free_transformer.FreeTransformerModel",
    "AutoModelForCausalLM": "modeling_free_transformer.FreeTransformerForCausalLM",
}

# Megatron layer suffix -> HF layer suffix, for the parameters that are a plain rename.
_LAYER_RENAMES = {
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
# The two pre-norms under each layer spec.
_NORM_NAMES = {
    "local": {
        "input_layernorm.weight": "input_layernorm.weight",
        "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    },
    "transformer_engine": {
        "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
        "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",
    },
}
_LATENT_RENAMES = {
    "zeta": "zeta",
    "post_sampler": "post_sampler",
    "readout_norm.weight": "readout_norm.weight",
    "readout.weight": "readout.weight",
}
_DECODER_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


class MappingError(ValueError):
    """A state dict that does not fit the config (the message names the key or the field)."""


def _check_llama_style(config) -> None:
    """The HF models implement one architecture: refuse configs they would silently compute wrongly."""
    expected = {
        "normalization": "RMSNorm",
        "gated_linear_unit": True,
        "add_bias_linear": False,
        "add_qkv_bias": False,
        "qk_layernorm": False,
        "rotary_interleaved": False,
        "layernorm_zero_centered_gamma": False,
        "apply_residual_connection_post_layernorm": False,
        "softmax_scale": None,
    }
    for field, value in expected.items():
        if getattr(config, field, value) != value:
            raise MappingError(f"HF export supports {field}={value!r} only, got {getattr(config, field)!r}")
    if getattr(config, "activation_func", F.silu) is not F.silu:
        raise MappingError(f"HF export supports activation_func=silu (SwiGLU) only, got {config.activation_func}")
    if getattr(config, "num_moe_experts", None):
        raise MappingError("HF export does not support MoE layers (num_moe_experts is set)")


def _heads(config) -> tuple[int, int, int]:
    num_heads = config.num_attention_heads
    num_groups = config.num_query_groups or num_heads
    head_dim = config.kv_channels or config.hidden_size // num_heads
    return num_heads, num_groups, head_dim


def _split_qkv(weight: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_heads, num_groups, head_dim = _heads(config)
    per_group = num_heads // num_groups
    expected = (num_heads + 2 * num_groups) * head_dim
    if weight.shape[0] != expected:
        raise MappingError(
            f"linear_qkv.weight has {weight.shape[0]} rows, expected {expected} "
            f"({num_heads} query heads + 2 x {num_groups} groups, head_dim {head_dim})"
        )
    grouped = weight.reshape(num_groups, (per_group + 2) * head_dim, -1)
    q = grouped[:, : per_group * head_dim].reshape(num_heads * head_dim, -1)
    k = grouped[:, per_group * head_dim : (per_group + 1) * head_dim].reshape(num_groups * head_dim, -1)
    v = grouped[:, (per_group + 1) * head_dim :].reshape(num_groups * head_dim, -1)
    return q.clone(), k.clone(), v.clone()


def _merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config) -> torch.Tensor:
    num_heads, num_groups, head_dim = _heads(config)
    per_group = num_heads // num_groups
    grouped = torch.cat(
        [
            q.reshape(num_groups, per_group * head_dim, -1),
            k.reshape(num_groups, head_dim, -1),
            v.reshape(num_groups, head_dim, -1),
        ],
        dim=1,
    )
    return grouped.reshape((num_heads + 2 * num_groups) * head_dim, -1)


def _layer_to_hf(megatron_layer: dict, hf_prefix: str, config, where: str) -> dict:
    """One transformer layer's tensors (suffix -> tensor, Megatron names) -> HF names under hf_prefix."""
    layer = dict(megatron_layer)
    out = {}
    impl = "transformer_engine" if "self_attention.linear_qkv.layer_norm_weight" in layer else "local"
    for name, hf_name in {**_NORM_NAMES[impl], **_LAYER_RENAMES}.items():
        if name not in layer:
            raise MappingError(f"{where}{name} is missing")
        out[hf_prefix + hf_name] = layer.pop(name)
    q, k, v = _split_qkv(layer.pop("self_attention.linear_qkv.weight"), config)
    out[hf_prefix + "self_attn.q_proj.weight"] = q
    out[hf_prefix + "self_attn.k_proj.weight"] = k
    out[hf_prefix + "self_attn.v_proj.weight"] = v
    gate, up = layer.pop("mlp.linear_fc1.weight").chunk(2, dim=0)
    out[hf_prefix + "mlp.gate_proj.weight"] = gate.clone()
    out[hf_prefix + "mlp.up_proj.weight"] = up.clone()
    if layer:
        raise MappingError(f"unexpected keys (biases? another layer type?): {[where + n for n in layer]}")
    return out


def _layer_to_megatron(hf_layer: dict, prefix: str, config, transformer_impl: str, where: str) -> dict:
    layer = dict(hf_layer)
    out = {}
    try:
        for name, hf_name in {**_NORM_NAMES[transformer_impl], **_LAYER_RENAMES}.items():
            out[prefix + name] = layer.pop(hf_name)
        q, k, v = (layer.pop(f"self_attn.{p}_proj.weight") for p in "qkv")
        out[prefix + "self_attention.linear_qkv.weight"] = _merge_qkv(q, k, v, config)
        out[prefix + "mlp.linear_fc1.weight"] = torch.cat(
            [layer.pop("mlp.gate_proj.weight"), layer.pop("mlp.up_proj.weight")], dim=0
        )
    except KeyError as e:
        raise MappingError(f"{where}{e.args[0]} is missing") from None
    if layer:
        raise MappingError(f"unexpected keys: {[where + n for n in layer]}")
    return out


def _group_layers(state_dict: dict, pattern: re.Pattern) -> tuple[dict[int, dict], dict]:
    """{layer index: {suffix: tensor}} and the rest."""
    layers, rest = {}, {}
    for name, tensor in state_dict.items():
        match = pattern.match(name)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
        else:
            rest[name] = tensor
    return layers, rest


def _is_tensor_entry(name: str, value) -> bool:
    # Megatron state dicts carry TE/FP8 bookkeeping (``_extra_state``) beside the parameters.
    return torch.is_tensor(value) and not name.endswith("_extra_state")


def megatron_to_hf(state_dict: dict, config, vocab_size: int | None = None) -> dict:
    """A TP1/PP1 megatron_free model's state dict -> HF tensors (Llama names, plus model.latent.*).

    ``vocab_size``: the tokenizer's true vocabulary; the rows Megatron padded beyond it are dropped
    (None keeps every row). The output layer is absent when embeddings are tied.
    """
    _check_llama_style(config)
    tensors = {n: v for n, v in state_dict.items() if _is_tensor_entry(n, v)}
    # FreeTransformerModel also registers the injection layer's latent as ``latent``: an alias.
    tensors = {n: v for n, v in tensors.items() if not n.startswith("latent.")}
    layers, rest = _group_layers(tensors, _DECODER_LAYER)
    if sorted(layers) != list(range(config.num_layers)):
        raise MappingError(
            f"state dict has decoder layers {sorted(layers)}, config.num_layers is "
            f"{config.num_layers} (export needs a whole TP1/PP1 model)"
        )

    def vocab_rows(name):
        weight = rest.pop(name)
        if vocab_size is not None:
            if vocab_size > weight.shape[0]:
                raise MappingError(f"vocab_size {vocab_size} exceeds {name}'s {weight.shape[0]} rows")
            weight = weight[:vocab_size]
        return weight.clone()

    hf = {
        "model.embed_tokens.weight": vocab_rows("embedding.word_embeddings.weight"),
        "model.norm.weight": rest.pop("decoder.final_layernorm.weight"),
    }
    if "output_layer.weight" in rest:
        hf["lm_head.weight"] = vocab_rows("output_layer.weight")
    for index, layer in sorted(layers.items()):
        latent = {n[len("latent.") :]: layer.pop(n) for n in list(layer) if n.startswith("latent.")}
        hf.update(_layer_to_hf(layer, f"model.layers.{index}.", config, f"decoder.layers.{index}."))
        if not latent:
            continue
        if config.baseline or index != config.injection_layer - 1:
            raise MappingError(
                f"decoder.layers.{index}.latent.* found, but config.baseline="
                f"{config.baseline}, injection_layer={config.injection_layer}"
            )
        where = f"decoder.layers.{index}.latent."
        for name, hf_name in _LATENT_RENAMES.items():
            if name not in latent:
                raise MappingError(f"{where}{name} is missing")
            hf["model.latent." + hf_name] = latent.pop(name)
        encoder = {n[len("encoder.") :]: latent.pop(n) for n in list(latent) if n.startswith("encoder.")}
        hf.update(_layer_to_hf(encoder, "model.latent.encoder.", config, where + "encoder."))
        if latent:
            raise MappingError(f"unexpected keys: {[where + n for n in latent]}")
    if not config.baseline and "model.latent.zeta" not in hf:
        raise MappingError(
            f"no decoder.layers.{config.injection_layer - 1}.latent.* in the state dict "
            "of a Free Transformer (config.baseline is False)"
        )
    if rest:
        raise MappingError(f"unexpected keys: {sorted(rest)}")
    return hf


def hf_to_megatron(
    hf_state_dict: dict, config, padded_vocab_size: int | None = None, transformer_impl: str = "local"
) -> dict:
    """HF tensors -> a TP1/PP1 megatron_free state dict (parameters only, no ``_extra_state``).

    ``padded_vocab_size``: Megatron's padded vocabulary; the extra rows are zeros (None: no padding).
    ``transformer_impl``: "local" or "transformer_engine", whose norm names differ.
    """
    _check_llama_style(config)
    if transformer_impl not in _NORM_NAMES:
        raise MappingError(f"transformer_impl must be one of {list(_NORM_NAMES)}, got {transformer_impl!r}")
    layers, rest = _group_layers(dict(hf_state_dict), _HF_LAYER)

    def vocab_rows(name):
        weight = rest.pop(name)
        if padded_vocab_size is None or padded_vocab_size == weight.shape[0]:
            return weight.clone()
        if padded_vocab_size < weight.shape[0]:
            raise MappingError(f"padded_vocab_size {padded_vocab_size} < {name}'s {weight.shape[0]} rows")
        return torch.cat([weight, weight.new_zeros(padded_vocab_size - weight.shape[0], weight.shape[1])])

    try:
        out = {
            "embedding.word_embeddings.weight": vocab_rows("model.embed_tokens.weight"),
            "decoder.final_layernorm.weight": rest.pop("model.norm.weight"),
        }
    except KeyError as e:
        raise MappingError(f"{e.args[0]} is missing") from None
    if "lm_head.weight" in rest:
        out["output_layer.weight"] = vocab_rows("lm_head.weight")
    if sorted(layers) != list(range(config.num_layers)):
        raise MappingError(f"HF state dict has layers {sorted(layers)}, config.num_layers is {config.num_layers}")
    for index, layer in sorted(layers.items()):
        prefix = f"decoder.layers.{index}."
        out.update(_layer_to_megatron(layer, prefix, config, transformer_impl, f"model.layers.{index}."))
    latent = {n[len("model.latent.") :]: rest.pop(n) for n in list(rest) if n.startswith("model.latent.")}
    if config.baseline:
        if latent:
            raise MappingError("model.latent.* found, but config.baseline is True")
    else:
        prefix = f"decoder.layers.{config.injection_layer - 1}.latent."
        try:
            for name, hf_name in _LATENT_RENAMES.items():
                out[prefix + name] = latent.pop(hf_name)
        except KeyError as e:
            raise MappingError(f"model.latent.{e.args[0]} is missing") from None
        encoder = {n[len("encoder.") :]: latent.pop(n) for n in list(latent) if n.startswith("encoder.")}
        out.update(_layer_to_megatron(encoder, prefix + "encoder.", config, transformer_impl, "model.latent.encoder."))
        if latent:
            raise MappingError(f"unexpected keys: {['model.latent.' + n for n in latent]}")
    if rest:
        raise MappingError(f"unexpected keys: {sorted(rest)}")
    return out


def hf_config_from(
    config,
    vocab_size: int,
    max_position_embeddings: int,
    tied: bool,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    rope_theta: float = 10000.0,
    dtype: torch.dtype | None = None,
) -> dict:
    """config.json content for the export: LlamaForCausalLM for a baseline, else the Free Transformer's
    custom classes (with ``auto_map``). ``rope_theta`` is the model's rotary base (--rotary-base)."""
    _check_llama_style(config)
    num_heads, num_groups, head_dim = _heads(config)
    hf = {
        "vocab_size": int(vocab_size),
        "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_groups,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(max_position_embeddings),
        "initializer_range": config.init_method_std,
        "rms_norm_eps": config.layernorm_epsilon,
        # transformers 4.x reads rope_theta, 5.x rope_parameters: write both.
        "rope_theta": float(rope_theta),
        "tie_word_embeddings": bool(tied),
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
    }
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        hf.update(torch_dtype=name, dtype=name)  # 4.x reads torch_dtype, 5.x dtype
    if config.baseline:
        hf.update(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            attention_bias=False,
            mlp_bias=False,
            attention_dropout=0.0,
            pretraining_tp=1,
            rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
        )
    else:
        hf.update(
            architectures=["FreeTransformerForCausalLM"],
            model_type="free_transformer",
            auto_map=dict(FREE_TRANSFORMER_AUTO_MAP),
            latent_bits=config.latent_bits,
            injection_layer=config.injection_layer,
            free_bits=config.free_bits,
        )
    return hf

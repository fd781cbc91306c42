"""HuggingFace export: parity with the megatron model, loading, generation with the KV cache, the
key mapping's round trip, and the exported folder.

The megatron models are built (and their reference logits computed) in one spawned rank; the HF side
runs in the test process. It must: megatron_free's CPU runtime patches torch's factories, and
transformers 5 then leaves from_pretrained's non-persistent buffers (Llama's RoPE inv_freq) garbage.
"""

from __future__ import annotations

import json
import os
import random
import sys

import pytest
import torch

pytest.importorskip("transformers", reason="HF export needs transformers (pip install 'megatron-free[hf]')")
pytest.importorskip("safetensors", reason="HF export needs safetensors (pip install 'megatron-free[hf]')")

from megatron_free.convert.export import export_hf  # noqa: E402
from megatron_free.convert.hf_mapping import MappingError, hf_to_megatron, megatron_to_hf  # noqa: E402
from tests.harness import run_ranks  # noqa: E402
from tests.integration.transformers_warnings import no_transformers_deprecations  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("no_transformers_deprecations")

VOCAB, PADDED_VOCAB = 300, 320  # the tokenizer's vocabulary, and Megatron's padded one
BATCH, SEQ, NEW_TOKENS = 2, 12, 8
SEED = 7
VARIANTS = {  # name: (baseline, tied embeddings)
    "free_untied": (False, False),
    "free_tied": (False, True),
    "baseline": (True, False),
}


def _config(baseline: bool):
    from tests.tiny import tiny_config

    return tiny_config(baseline=baseline)


def _inputs():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    codes = torch.randint(0, 2 ** _config(False).latent_bits, (BATCH, SEQ), generator=gen)
    return tokens, codes


def _megatron_reference(tokens, codes):
    """In a spawned rank: each variant's state dict, logits for given codes, posterior bit logits."""
    from megatron_free.model.init import initialize_parameters
    from megatron_free.model.latent import LatentControl
    from megatron_free.model.model import FreeTransformerModel
    from megatron_free.parallel.distributed import ParallelConfig, initialize_distributed

    initialize_distributed(ParallelConfig(), seed=SEED)
    positions = torch.arange(SEQ).expand(BATCH, SEQ)
    seeds = torch.arange(BATCH)
    results = {}
    for name, (baseline, tied) in VARIANTS.items():
        model = FreeTransformerModel(
            _config(baseline),
            vocab_size=PADDED_VOCAB,
            max_sequence_length=SEQ,
            share_embeddings_and_output_weights=tied,
        )
        initialize_parameters(model, SEED)
        model.eval()
        bit_logits = []
        if model.latent is not None:
            model.latent.readout.register_forward_hook(
                lambda module, args, out: bit_logits.append(out.detach().transpose(0, 1).clone())
            )
        with torch.no_grad():
            logits = model(tokens, positions, None, latent_seeds=seeds, latent=LatentControl(mode="given", codes=codes))
            if model.latent is not None:
                model(tokens, positions, None, latent_seeds=seeds, latent=LatentControl(mode="posterior"))
        state = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
        results[name] = {
            "state": state,
            "logits": logits.detach().clone(),
            "bit_logits": bit_logits[0] if bit_logits else None,
        }
    return results


def _train_tokenizer(folder) -> str:
    from megatron_free.data.train_tokenizer import TokenizerTrainingConfig, train_tokenizer

    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "12", "345", "éclair", "  indented", "x=1", "\n"]
    corpus = os.path.join(folder, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)))
    return train_tokenizer(
        TokenizerTrainingConfig(
            inputs=[corpus],
            input_format="text-files",
            model_prefix=os.path.join(folder, "tok"),
            vocab_size=VOCAB,
            num_threads=1,
        ),
        log=None,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The megatron references and one HF export per variant (the untied one with a tokenizer)."""
    root = tmp_path_factory.mktemp("hf_export")
    tokens, codes = _inputs()
    (reference,) = run_ranks(1, _megatron_reference, tokens, codes)
    tokenizer_model = _train_tokenizer(str(root))
    paths = {}
    for name, (baseline, _) in VARIANTS.items():
        paths[name] = export_hf(
            reference[name]["state"],
            _config(baseline),
            root / name,
            vocab_size=VOCAB,
            tokenizer=tokenizer_model if name == "free_untied" else None,
            max_shard_size="40KB",
            max_position_embeddings=64,
        )
    return {
        "tokens": tokens,
        "codes": codes,
        "reference": reference,
        "paths": paths,
        "tokenizer_model": tokenizer_model,
        "root": root,
    }


_loaded = {}


def _load(exported, name):
    from transformers import AutoModelForCausalLM

    if name not in _loaded:
        _loaded[name] = AutoModelForCausalLM.from_pretrained(exported["paths"][name], trust_remote_code=True).eval()
    return _loaded[name]


@pytest.mark.parametrize("name", ["free_untied", "free_tied"])
def test_free_transformer_logits_match_megatron(exported, name):
    """Exported Free Transformer: fp32 logits (given codes) and encoder bit logits equal megatron's."""
    model = _load(exported, name)
    assert type(model).__name__ == "FreeTransformerForCausalLM"
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied == model.config.tie_word_embeddings == (name == "free_tied")
    reference = exported["reference"][name]
    with torch.no_grad():
        given = model(exported["tokens"], latent_codes=exported["codes"])
        posterior = model(exported["tokens"], latent_mode="posterior", latent_seed=0)
    assert given.logits.shape == (BATCH, SEQ, VOCAB)
    torch.testing.assert_close(given.logits, reference["logits"][..., :VOCAB], atol=1e-4, rtol=0)
    torch.testing.assert_close(posterior.latent_bit_logits, reference["bit_logits"], atol=1e-4, rtol=0)


def test_baseline_exports_as_llama(exported):
    """A baseline exports as a plain LlamaForCausalLM (no remote code) with megatron's logits."""
    from transformers import AutoModelForCausalLM

    path = exported["paths"]["baseline"]
    assert not os.path.exists(os.path.join(path, "modeling_free_transformer.py"))
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        logits = model(exported["tokens"]).logits
    torch.testing.assert_close(logits, exported["reference"]["baseline"]["logits"][..., :VOCAB], atol=1e-4, rtol=0)


def test_generate_with_each_latent_mode(exported):
    """AutoModelForCausalLM + AutoTokenizer load the export; greedy generate() runs in every latent mode."""
    from transformers import AutoTokenizer

    model = _load(exported, "free_untied")
    # transformers 5's AutoTokenizer reads config.json first, whose auto_map needs the same flag.
    tokenizer = AutoTokenizer.from_pretrained(exported["paths"]["free_untied"], trust_remote_code=True)
    ids = torch.tensor([tokenizer.encode("the cat sat on a mat")])
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "min_new_tokens": NEW_TOKENS}
    posterior = model.generate(ids, latent_seed=1, **kwargs)
    assert torch.equal(posterior, model.generate(ids, latent_mode="posterior", latent_seed=1, **kwargs))
    prior = model.generate(ids, latent_mode="prior", latent_seed=1, **kwargs)
    codes = torch.randint(0, model.config.num_codes, (1, ids.shape[1] + NEW_TOKENS))
    given = model.generate(ids, latent_codes=codes, **kwargs)
    for out in (posterior, prior, given):
        assert out.shape == (1, ids.shape[1] + NEW_TOKENS) and torch.equal(out[:, : ids.shape[1]], ids)
    assert isinstance(tokenizer.decode(given[0]), str)


def _greedy(model, prompt, **kwargs):
    """generate()'s tokens and per-step logits [b, new, V]."""
    out = model.generate(
        prompt, max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True, return_dict_in_generate=True, **kwargs
    )
    return out.sequences, torch.stack(out.logits, dim=1)


def test_kv_cache_generation_equals_full_recompute(exported):
    """generate() with the KV cache equals a no-cache loop recomputing the whole sequence each step."""
    model = _load(exported, "free_tied")
    prompt = exported["tokens"][:, :5]
    codes = torch.randint(
        0, model.config.num_codes, (BATCH, 5 + NEW_TOKENS), generator=torch.Generator().manual_seed(3)
    )
    sequence, step_logits = prompt, []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(sequence, latent_codes=codes[:, : sequence.shape[1]], use_cache=False).logits
            step_logits.append(logits[:, -1])
            sequence = torch.cat([sequence, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    cached, cached_logits = _greedy(model, prompt, latent_codes=codes)
    assert torch.equal(cached, sequence)
    torch.testing.assert_close(cached_logits, torch.stack(step_logits, dim=1), atol=1e-5, rtol=0)
    _, other_logits = _greedy(model, prompt, latent_codes=(codes + 1) % model.config.num_codes)
    assert not torch.allclose(other_logits, cached_logits, atol=1e-3), "the codes should matter"
    for mode in ("posterior", "prior"):  # hashed draws: the same Z with and without the cache
        with_cache = _greedy(model, prompt, latent_mode=mode, latent_seed=5)
        without = _greedy(model, prompt, latent_mode=mode, latent_seed=5, use_cache=False)
        assert torch.equal(with_cache[0], without[0])
        torch.testing.assert_close(with_cache[1], without[1], atol=1e-5, rtol=0)


def test_forward_continues_from_the_cache(exported):
    """A forward given the cache of the prompt (under the installed transformers' name, or the other
    one) gives the logits of a forward over prompt + new tokens; the returned cache has grown."""
    from transformers.cache_utils import DynamicCache

    model = _load(exported, "free_tied")
    cache_name = sys.modules[type(model).__module__].CACHE_NAME  # the remote code's module
    tokens, codes = exported["tokens"], exported["codes"]
    with torch.no_grad():
        full = model(tokens, latent_codes=codes, use_cache=False).logits
        prompt = model(tokens[:, :8], latent_codes=codes[:, :8], use_cache=True)
        cache = getattr(prompt, cache_name)
        assert isinstance(cache, DynamicCache) and cache.get_seq_length() == 8
        for name in ("cache", "past_key_values"):
            step_cache = DynamicCache()
            model(tokens[:, :8], latent_codes=codes[:, :8], **{name: step_cache})
            step = model(tokens[:, 8:], latent_codes=codes, use_cache=True, **{name: step_cache})
            assert getattr(step, cache_name) is step_cache and step_cache.get_seq_length() == SEQ, name
            torch.testing.assert_close(step.logits, full[:, 8:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not both"):
        model(tokens, cache=DynamicCache(), past_key_values=DynamicCache())


def test_left_padded_batch_matches_unpadded(exported):
    """A left-padded batch (attention_mask, per-sample seeds) generates as each prompt alone."""
    model = _load(exported, "free_tied")
    long, short = exported["tokens"][0, :6], exported["tokens"][1, :3]
    batch = torch.stack([long, torch.cat([torch.zeros(3, dtype=torch.long), short])])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False}
    padded = model.generate(batch, attention_mask=mask, latent_seed=torch.tensor([11, 12]), **kwargs)
    alone_long = model.generate(long[None], latent_seed=torch.tensor([11]), **kwargs)
    alone_short = model.generate(short[None], latent_seed=torch.tensor([12]), **kwargs)
    assert torch.equal(padded[0], alone_long[0])
    assert torch.equal(padded[1, 3:], alone_short[0])


def test_encoder_is_non_causal_decoder_causal(exported):
    """Posterior bit logits at position 0 depend on the last prompt token; decoder logits do not."""
    model = _load(exported, "free_untied")
    tokens = exported["tokens"][:1]
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % VOCAB
    with torch.no_grad():
        a = model(tokens, latent_mode="posterior", latent_seed=0)
        b = model(changed, latent_mode="posterior", latent_seed=0)
        given_a = model(tokens, latent_codes=exported["codes"][:1]).logits
        given_b = model(changed, latent_codes=exported["codes"][:1]).logits
    assert not torch.allclose(a.latent_bit_logits[0, 0], b.latent_bit_logits[0, 0])
    torch.testing.assert_close(given_a[0, :-1], given_b[0, :-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_mapping_round_trip(exported, name):
    """hf_to_megatron(megatron_to_hf(sd)) returns every megatron tensor exactly (local and TE names)."""
    baseline, _ = VARIANTS[name]
    config = _config(baseline)
    # FreeTransformerModel's state dict repeats the injection layer's latent as ``latent.*``.
    state = {k: v for k, v in exported["reference"][name]["state"].items() if not k.startswith("latent.")}
    back = hf_to_megatron(megatron_to_hf(state, config), config)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    te_names = {
        k.replace("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight").replace(
            "pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"
        ): v
        for k, v in state.items()
    }
    back = hf_to_megatron(megatron_to_hf(te_names, config), config, transformer_impl="transformer_engine")
    assert back.keys() == te_names.keys() and all(torch.equal(back[k], te_names[k]) for k in te_names)
    # Vocabulary padding: dropped on export, zero rows on import.
    hf = megatron_to_hf(state, config, vocab_size=VOCAB)
    assert hf["model.embed_tokens.weight"].shape[0] == VOCAB
    padded = hf_to_megatron(hf, config, padded_vocab_size=PADDED_VOCAB)["embedding.word_embeddings.weight"]
    assert torch.equal(padded[:VOCAB], state["embedding.word_embeddings.weight"][:VOCAB])
    assert not padded[VOCAB:].any()
    partial = {k: v for k, v in state.items() if not k.startswith("decoder.layers.3.")}
    with pytest.raises(MappingError, match="num_layers"):
        megatron_to_hf(partial, config)


def test_export_folder_contents(exported):
    """The folder: config with auto_map, modeling code, sharded safetensors + index, tokenizer, atomic."""
    from transformers import AutoTokenizer

    from megatron_free.data.tokenizers import SentencePieceTokenizer

    path = exported["paths"]["free_untied"]
    config = json.load(open(os.path.join(path, "config.json")))
    auto_model = config["auto_map"]["AutoModelForCausalLM"]
    assert auto_model == "modeling_free_transformer.FreeTransformerForCausalLM"
    assert config["vocab_size"] == VOCAB and config["eos_token_id"] == 2 and config["injection_layer"] == 3
    index = json.load(open(os.path.join(path, "model.safetensors.index.json")))
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all(os.path.exists(os.path.join(path, s)) for s in shards)
    assert "model.latent.post_sampler" in index["weight_map"]
    expected = (
        "generation_config.json",
        "tokenizer.model",
        "tokenizer.json",
        "modeling_free_transformer.py",
        "latent_rng.py",
    )
    for name in expected:
        assert os.path.exists(os.path.join(path, name)), name
    assert sorted(p.name for p in exported["root"].iterdir() if p.name.startswith(".")) == []
    umask = os.umask(0o077)
    os.umask(umask)
    modes = {name: os.stat(os.path.join(path, name)).st_mode & 0o777 for name in os.listdir(path)}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # as any file the user writes (safetensors: 0600)
    assert os.stat(path).st_mode & 0o777 == 0o777 & ~umask
    with pytest.raises(FileExistsError):
        export_hf(exported["reference"]["free_untied"]["state"], _config(False), path, vocab_size=VOCAB)

    hf_tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    ours = SentencePieceTokenizer(exported["tokenizer_model"])
    for text in ["the cat sat", " leading space", "two  spaces\nx=1 12345 éclair", "unseen Zebra", "</s>"]:
        assert hf_tokenizer.encode(text) == ours.tokenize(text), text
        assert hf_tokenizer.decode(ours.tokenize(text)) == text

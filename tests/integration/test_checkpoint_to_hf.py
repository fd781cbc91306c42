"""From a training run to HuggingFace: a toy-task checkpoint saved with TP2 converts with
megatron-free-convert-hf, loads with AutoModelForCausalLM(trust_remote_code=True), matches the
megatron model's logits, and generates; megatron-free-generate samples from the checkpoint."""

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers", reason="HF export needs transformers (pip install 'megatron-free[hf]')")

from tests.distributed.test_training import tiny_args  # noqa: E402
from tests.harness import run_ranks  # noqa: E402
from tests.integration.transformers_warnings import no_transformers_deprecations  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("no_transformers_deprecations")

SEQ = 10


def _train_and_save(save_dir, *extra):
    from megatron_free.pretrain import run

    run(
        tiny_args(
            torch.distributed.get_world_size(),
            "--tensor-model-parallel-size",
            "2",
            "--train-iters",
            "2",
            "--save",
            save_dir,
            *extra,
        )
    )


def _megatron_logits(load_dir, tokens, codes):
    """Logits of the checkpoint loaded unsplit, for given codes (in a spawned rank)."""
    from megatron_free.inference.checkpoint import load_for_inference
    from megatron_free.model.latent import LatentControl

    model, _, tokenizer, *_ = load_for_inference(load_dir)
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        logits = model(
            tokens,
            positions,
            None,
            latent_seeds=torch.arange(tokens.shape[0]),
            latent=LatentControl("given", codes=codes),
        )
    return logits[..., : tokenizer.vocab_size]


def _megatron_loss(load_dir, tokens, codes):
    """Per-token training loss of the checkpoint (its vocabulary padded to 32 rows) on tokens."""
    from megatron_free.inference.checkpoint import load_for_inference
    from megatron_free.model.latent import LatentControl

    model, *_ = load_for_inference(load_dir)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    positions = torch.arange(inputs.shape[1]).expand_as(inputs)
    with torch.no_grad():
        return model(
            inputs,
            positions,
            None,
            labels=labels,
            latent_seeds=torch.arange(tokens.shape[0]),
            latent=LatentControl("given", codes=codes),
        )


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp2_run")
    run_ranks(2, _train_and_save, str(root / "ckpt"))
    result = _cli("megatron_free.convert.cli", "--load", str(root / "ckpt"), "--output", str(root / "hf"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"wrote {root / 'hf'}: float32 weights (the checkpoint's dtype)"
    return root


def _weight_dtypes(folder):
    from safetensors import safe_open

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    dtypes = set()
    for shard in set(index["weight_map"].values()):
        with safe_open(folder / shard, "pt") as f:
            dtypes |= {f.get_slice(name).get_dtype() for name in f.keys()}
    return dtypes, json.loads((folder / "config.json").read_text())["torch_dtype"]


@pytest.mark.slow
def test_export_keeps_the_checkpoint_dtype_unless_told(run_dir, tmp_path):
    """An fp32 run exports float32 weights by default; --dtype casts, and the last line says from what;
    a bf16 run's checkpoint exports bfloat16 by default."""
    assert _weight_dtypes(run_dir / "hf") == ({"F32"}, "float32")
    cast = _cli(
        "megatron_free.convert.cli",
        "--load",
        str(run_dir / "ckpt"),
        "--output",
        str(tmp_path / "bf16"),
        "--dtype",
        "bfloat16",
    )
    assert cast.returncode == 0, cast.stderr
    assert cast.stdout.strip().splitlines()[-1] == (
        f"wrote {tmp_path / 'bf16'}: bfloat16 weights (cast from the checkpoint's float32 by --dtype)"
    )
    assert _weight_dtypes(tmp_path / "bf16") == ({"BF16"}, "bfloat16")

    run_ranks(2, _train_and_save, str(tmp_path / "bf16_run"), "--bf16")
    kept = _cli("megatron_free.convert.cli", "--load", str(tmp_path / "bf16_run"), "--output", str(tmp_path / "hf"))
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.strip().splitlines()[-1] == f"wrote {tmp_path / 'hf'}: bfloat16 weights (the checkpoint's dtype)"
    assert _weight_dtypes(tmp_path / "hf") == ({"BF16"}, "bfloat16")


@pytest.mark.slow
def test_tp2_checkpoint_exports_with_matching_logits(run_dir):
    """The TP2 checkpoint's HF export gives the megatron logits (float32, 1e-4) for given codes."""
    from transformers import AutoModelForCausalLM

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 30, (2, SEQ), generator=gen)
    codes = torch.randint(0, 2**6, (2, SEQ), generator=gen)
    (expected,) = run_ranks(1, _megatron_logits, str(run_dir / "ckpt"), tokens, codes)
    model = AutoModelForCausalLM.from_pretrained(run_dir / "hf", trust_remote_code=True)
    with torch.no_grad():
        got = model(tokens, latent_mode="given", latent_codes=codes).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_export_reproduces_the_training_loss(run_dir):
    """Training's cross-entropy leaves Megatron's padding rows out, as the export (which drops them)
    does: the HF model's per-token loss is the checkpoint's."""
    from transformers import AutoModelForCausalLM

    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 30, (2, SEQ + 1), generator=gen)
    codes = torch.randint(0, 2**6, (2, SEQ), generator=gen)
    (expected,) = run_ranks(1, _megatron_loss, str(run_dir / "ckpt"), tokens, codes)
    model = AutoModelForCausalLM.from_pretrained(run_dir / "hf", trust_remote_code=True)
    with torch.no_grad():
        logits = model(tokens[:, :-1], latent_mode="given", latent_codes=codes).logits
    got = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_export_loads_with_tokenizer_and_generates(run_dir):
    """AutoTokenizer + AutoModelForCausalLM load the export and sample toy-task text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "hf", trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(run_dir / "hf", trust_remote_code=True)
    inputs = tokenizer("K>", return_tensors="pt")  # as README.md: all of it, not just input_ids
    assert inputs.input_ids.tolist() == [[12, 28]] and set(inputs) == {"input_ids", "attention_mask"}
    out = model.generate(**inputs, max_new_tokens=8, do_sample=True, latent_seed=3)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    assert text.startswith("K>") and set(text) <= set("_!>ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@pytest.mark.slow
def test_generate_cli_and_bad_load(run_dir, tmp_path):
    """megatron-free-generate prints samples; a missing checkpoint, or an existing --output without
    --overwrite, is a one-line error, exit 2."""
    result = _cli(
        "megatron_free.inference.generate",
        "--load",
        str(run_dir / "ckpt"),
        "--prompt",
        "K>",
        "--num-samples",
        "2",
        "--max-new-tokens",
        "5",
        "--latent",
        "fixed-seed",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("K>") for line in lines)
    missing = _cli("megatron_free.convert.cli", "--load", str(tmp_path / "nope"), "--output", str(tmp_path / "hf"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: --load")
    exists = _cli("megatron_free.convert.cli", "--load", str(run_dir / "ckpt"), "--output", str(run_dir / "hf"))
    assert (exists.returncode, exists.stderr) == (
        2,
        f"error: --output {run_dir / 'hf'} exists: pass --overwrite to replace it\n",
    )


@pytest.mark.slow
def test_prior_default_for_likelihood_scoring(run_dir):
    """default_latent_mode=prior (an lm-eval model_arg) keeps one-forward scoring causal."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "hf", trust_remote_code=True, default_latent_mode="prior")
    tokens = torch.randint(0, 30, (1, SEQ), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 30
    with torch.no_grad():
        a = model(tokens, latent_seed=0).logits
        b = model(changed, latent_seed=0).logits
    assert torch.equal(a[:, :-1], b[:, :-1])


def _greedy_with_codes_and_replay(load_dir, prompt, codes, num_tokens):
    """Greedy generation with explicit codes, and the argmax of one forward over its output with
    the same codes (a causal model: position t sees tokens and codes up to t only)."""
    from megatron_free.inference.checkpoint import load_for_inference
    from megatron_free.inference.generate import generate
    from megatron_free.model.latent import LatentControl

    model, _, tokenizer, *_ = load_for_inference(load_dir)
    (post_sampler,) = [p for name, p in model.named_parameters() if name.endswith("post_sampler")]
    with torch.no_grad():
        post_sampler.normal_(0.0, 10.0, generator=torch.Generator().manual_seed(0))  # Z must matter
    ids = generate([model], prompt, num_tokens, top_k=1, codes=codes, vocab_size=tokenizer.vocab_size)
    with pytest.raises(ValueError, match="codes has shape"):
        generate([model], prompt, num_tokens, codes=codes[:, :-1])
    inputs = ids[:, :-1]
    positions = torch.arange(inputs.shape[1]).expand_as(inputs)
    with torch.no_grad():
        logits = model(
            inputs,
            positions,
            None,
            latent_seeds=torch.arange(inputs.shape[0]),
            latent=LatentControl("given", codes=codes[:, :-1]),
        )
    return ids, logits[..., : tokenizer.vocab_size].argmax(-1)


@pytest.mark.slow
def test_generation_with_explicit_codes_follows_them(run_dir):
    """generate(codes=...) (the toy study's shared / independent Z) conditions every new token on
    the given code of its position: greedy samples equal the argmax of a forward with those codes;
    rows that share prompt and codes share their sample."""
    prompt = torch.tensor([[12, 28]] * 3)
    codes = torch.randint(0, 2**6, (3, 2 + 12), generator=torch.Generator().manual_seed(5))
    codes[1] = codes[0]
    (ids, replay) = run_ranks(1, _greedy_with_codes_and_replay, str(run_dir / "ckpt"), prompt, codes, 12)[0]
    assert ids.shape == (3, 14) and torch.equal(ids[:, :2], prompt)
    assert torch.equal(ids[:, 2:], replay[:, 1:])
    assert torch.equal(ids[0], ids[1])


def _megatron_draws(load_dir, prompt, num_tokens, latent, seed):
    """megatron-free-generate's generate() on the checkpoint loaded unsplit (greedy, latent seed ``seed``),
    and the codes its encoder draws for the prompt with that seed."""
    from megatron_free.inference.checkpoint import load_for_inference
    from megatron_free.inference.generate import generate
    from megatron_free.model.latent import LatentControl
    from megatron_free.model.latent_rng import sample_seeds

    model, description, tokenizer, *_ = load_for_inference(load_dir)
    ids = generate(
        [model],
        prompt,
        num_tokens,
        latent=latent,
        latent_bits=description.latent_bits,
        seed=seed,
        temperature=0,
        vocab_size=tokenizer.vocab_size,
    )
    positions = torch.arange(prompt.shape[1]).expand_as(prompt)
    with torch.no_grad():
        model(
            prompt, positions, None, latent_seeds=sample_seeds(seed, prompt.shape[0]), latent=LatentControl("posterior")
        )
    return ids, model.latent.last_codes.t()


@pytest.mark.slow
@pytest.mark.parametrize("megatron_latent, hf_latent_mode", [("posterior-prompt", "posterior"), ("uniform", "prior")])
def test_checkpoint_and_export_draw_the_same_latent(run_dir, megatron_latent, hf_latent_mode):
    """One latent RNG: for the same prompt and latent seed, the checkpoint (megatron-free-generate's
    generate()) and its HF export draw the same codes (the encoder's for the prompt, uniform ones after
    it) and give the same greedy tokens."""
    from transformers import AutoModelForCausalLM

    prompt = torch.tensor([[12, 28, 0, 0, 1, 0, 12, 12, 12, 12, 0, 0], [5, 28, 0, 0, 0, 5, 5, 5, 5, 1, 5, 5]])
    model = AutoModelForCausalLM.from_pretrained(run_dir / "hf", trust_remote_code=True)
    with torch.no_grad():
        exported = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=12,
            do_sample=False,
            latent_mode=hf_latent_mode,
            latent_seed=5,
        )
        codes = {seed: model(prompt, latent_mode="posterior", latent_seed=seed).latent_codes for seed in (5, 6)}
    ((ids, megatron_codes),) = run_ranks(1, _megatron_draws, str(run_dir / "ckpt"), prompt, 12, megatron_latent, 5)
    assert torch.equal(ids, exported)
    assert torch.equal(megatron_codes, codes[5]) and not torch.equal(codes[5], codes[6])

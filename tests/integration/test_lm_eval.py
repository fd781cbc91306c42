"""lm-evaluation-harness on toy-task exports: the free_transformer model's likelihoods (no leakage of the
continuation into the context's Z, probabilities that sum to one, numbers independent of batching), and
the harness end to end, offline, on the repository's toy tasks, beside the baseline through --model hf."""

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="evaluation needs lm-evaluation-harness (pip install 'megatron-free[eval]')")
pytest.importorskip("transformers", reason="the HF export needs transformers (pip install 'megatron-free[hf]')")

from lm_eval.api.instance import Instance  # noqa: E402

TASKS = Path(__file__).resolve().parents[2] / "megatron_free" / "evaluation" / "tasks" / "toy"
OFFLINE = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TINY = [
    "--toy-data",
    "--seq-length",
    "66",
    "--num-layers",
    "2",
    "--hidden-size",
    "64",
    "--ffn-hidden-size",
    "128",
    "--num-attention-heads",
    "4",
    "--micro-batch-size",
    "32",
    "--train-iters",
    "80",
    "--lr",
    "0.003",
    "--lr-warmup-iters",
    "10",
    "--log-interval",
    "40",
    "--seed",
    "7",
]


def _run(*args, timeout=600):
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=OFFLINE)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """HF exports of a toy Free Transformer (kappa = 1 bit, H = 4) and of its baseline."""
    root = tmp_path_factory.mktemp("lm_eval")
    for name, extra in (("free", ["--latent-bits", "4", "--free-bits", "1.0"]), ("baseline", ["--baseline"])):
        _run("megatron_free.pretrain", *TINY, *extra, "--save", str(root / name / "ckpt"))
        _run("megatron_free.convert.cli", "--load", str(root / name / "ckpt"), "--output", str(root / name / "hf"))
    return root


def _model(exports, **model_args):
    from megatron_free.evaluation.lm_eval_model import FreeTransformerLM

    return FreeTransformerLM(pretrained=str(exports / "free" / "hf"), **model_args)


def _loglikelihood(model, pairs):
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    return [score for score, _ in model.loglikelihood(requests, disable_tqdm=True)]


@pytest.mark.slow
@pytest.mark.parametrize("latent_samples", [1, 3])
def test_continuations_of_a_context_sum_to_one(exports, latent_samples):
    """Over all two-token continuations vw of a context (the 29 characters and the end-of-document
    token), sum P(vw | x) = 1: the context's Z never depends on the continuation, and each context has
    one Z per draw."""
    model = _model(exports, batch_size=150, latent_samples=latent_samples, latent_seed=3)
    context = model.tok_encode("Q>____!___Q")
    vocab = range(model.model.config.vocab_size)
    requests = [(("", ""), context, [v, w]) for v in vocab for w in vocab]
    assert len(requests) == 30**2
    total = sum(math.exp(score) for score, _ in model._loglikelihood_tokens(requests))
    assert total == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_continuation_never_influences_the_context_latent(exports):
    """Two continuations that share their first token give it the same log-probability (same seed), and
    the context's codes are those of the encoder over the context alone."""
    model = _model(exports, latent_seed=11)
    context = model.tok_encode("C>__CCCC")
    (first_a, _), (first_b, _) = model.token_log_probs(
        [(context, model.tok_encode("CCCC")), (context, model.tok_encode("C___"))]
    )
    assert first_a[0].item() == pytest.approx(first_b[0].item(), abs=1e-6)
    assert first_a[1].item() != pytest.approx(first_b[1].item(), abs=1e-3)
    seeds = torch.tensor([123])
    alone = model._context_codes([context], seeds)[0]
    padded = model._context_codes([context, context + model.tok_encode("!!!!!!")], torch.tensor([123, 123]))[0]
    assert torch.equal(alone, padded)


@pytest.mark.slow
def test_scores_do_not_depend_on_batch_size_or_order(exports):
    rng = random.Random(0)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    pairs = []
    for _ in range(12):
        letter = rng.choice(letters)
        context = f"{letter}>" + "_" * rng.randrange(1, 20) + letter
        pairs.append((context, rng.choice([letter * 3, "___", "!" + letter * 2])))
    reference = _loglikelihood(_model(exports, batch_size=1, latent_samples=2), pairs)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    shuffled = _loglikelihood(_model(exports, batch_size=5, latent_samples=2), [pairs[i] for i in order])
    torch.testing.assert_close(
        torch.tensor([shuffled[order.index(i)] for i in range(len(pairs))]), torch.tensor(reference), atol=1e-5, rtol=0
    )
    other_seed = _loglikelihood(_model(exports, batch_size=5, latent_samples=2, latent_seed=1), pairs)
    assert other_seed != pytest.approx(reference, abs=1e-6)


@pytest.mark.slow
def test_harness_end_to_end_offline_beside_the_baseline(exports, tmp_path):
    """megatron-free-lm-eval --model free_transformer on the repository's toy tasks writes the harness's
    results JSON; the baseline export runs through the harness's own --model hf on the same tasks."""

    def results(output):
        (path,) = list(Path(output).rglob("results_*.json"))
        return json.loads(path.read_text())["results"]

    common = ["--tasks", "toy", "--include_path", str(TASKS), "--limit", "8", "--batch_size", "8"]
    _run(
        "megatron_free.evaluation",
        "--model",
        "free_transformer",
        "--model_args",
        f"pretrained={exports / 'free' / 'hf'},latent_samples=2,latent_seed=0",
        *common,
        "--output_path",
        str(tmp_path / "free"),
    )
    free = results(tmp_path / "free")
    assert 0.0 <= free["toy_target"]["acc,none"] <= 1.0
    assert 0.0 <= free["toy_generation"]["well_formed,none"] <= 1.0
    assert free["toy_perplexity"]["bits_per_byte,none"] > 0

    _run(
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={exports / 'baseline' / 'hf'},dtype=float32",
        "--device",
        "cpu",
        *common,
        "--output_path",
        str(tmp_path / "baseline"),
    )
    baseline = results(tmp_path / "baseline")
    assert set(baseline) >= {"toy_target", "toy_generation", "toy_perplexity"}

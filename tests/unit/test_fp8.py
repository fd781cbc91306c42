"""FP8: --fp8-format and the recipe flags reach megatron-core's TransformerConfig (which makes
TransformerBlock run the Transformer Engine layers under fp8_autocast), and the latent's own
modules (readout norm, D->H readout, binary mapper, post-sampler) are plain torch, which
fp8_autocast never touches: they stay bf16/fp32."""

from __future__ import annotations

import pytest
import torch

from megatron_free.arguments import ArgumentError
from megatron_free.run_config import model_description, training_model_config
from tests.tiny import tiny_args

FP8 = ("--bf16", "--transformer-impl", "transformer_engine")


def build_model_config(args):
    return training_model_config(args, model_description(args, vocab_size=30, padded_vocab_size=32))


@pytest.mark.parametrize("fmt, recipe", [("hybrid", "delayed"), ("e4m3", "tensorwise")])
def test_fp8_flags_reach_the_transformer_config(fmt, recipe):
    """Every FP8 flag lands in FreeTransformerConfig's megatron fields, beside bf16."""
    args = tiny_args(
        1,
        *FP8,
        "--fp8-format",
        fmt,
        "--fp8-recipe",
        recipe,
        "--fp8-margin",
        "1",
        "--fp8-amax-history-len",
        "16",
        "--fp8-amax-compute-algo",
        "most_recent",
    )
    config = build_model_config(args)
    assert (config.fp8, config.fp8_recipe, config.fp8_margin) == (fmt, recipe, 1)
    assert (config.fp8_amax_history_len, config.fp8_amax_compute_algo) == (16, "most_recent")
    assert config.bf16 and config.params_dtype == torch.bfloat16
    assert args.transformer_impl == "transformer_engine"


def test_no_fp8_unless_asked():
    """bf16 alone: no FP8 anywhere."""
    config = build_model_config(tiny_args(1, *FP8))
    assert config.fp8 is None and config.bf16


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--transformer-impl", "transformer_engine"), "--fp8-format needs --bf16"),
        (("--bf16", "--transformer-impl", "local"), "--fp8-format needs --transformer-impl transformer_engine"),
    ],
)
def test_fp8_needs_bf16_and_transformer_engine(extra, message):
    """FP8 without bf16 master compute or without Transformer Engine is refused, flags named."""
    with pytest.raises(ArgumentError, match=message):
        tiny_args(1, *extra, "--fp8-format", "hybrid")


def _latent_module_types():
    from tests.tiny import build_tiny_model, tiny_config

    model = build_tiny_model(tiny_config())
    latent = model.latent
    return {
        "readout_norm": type(latent.readout_norm),
        "readout": type(latent.readout),
        "post_sampler": type(latent.post_sampler),
        "own_modules": sorted(
            {
                type(m).__module__.split(".")[0]
                for name, m in latent.named_modules()
                if name and not name.startswith("encoder")
            }
        ),
    }


def test_latent_modules_are_plain_torch(ranks):
    """The readout norm and readout are torch.nn modules and the post-sampler a bare Parameter
    (used by our autograd Function), whatever the layer spec: no Transformer Engine module that
    fp8_autocast would quantize. (The encoder block itself comes from the spec, as the paper's.)"""
    (types,) = ranks(1, _latent_module_types)
    assert types["readout_norm"] is torch.nn.RMSNorm
    assert types["readout"] is torch.nn.Linear
    assert types["post_sampler"] is torch.nn.Parameter
    assert types["own_modules"] == ["torch"]


def _fp8_step():
    import transformer_engine.pytorch as te

    from megatron_free.model.init import initialize_parameters
    from megatron_free.model.model import FreeTransformerModel
    from megatron_free.parallel.distributed import ParallelConfig, initialize_distributed
    from tests.tiny import SEQ, VOCAB, run_step, tiny_batches, tiny_config

    config = tiny_config(
        bf16=True,
        params_dtype=torch.bfloat16,
        pipeline_dtype=torch.bfloat16,
        fp8="hybrid",
        fp8_recipe="delayed",
        use_cpu_initialization=False,
    )
    initialize_distributed(ParallelConfig(), seed=7)
    model = FreeTransformerModel(
        config, vocab_size=VOCAB, max_sequence_length=SEQ, transformer_impl="transformer_engine"
    ).cuda()
    initialize_parameters(model, 7)
    batches = [{k: v.cuda() for k, v in b.items()} for b in tiny_batches(2)]
    loss = run_step(model, batches)
    # the GEMM modules (QKV, attention output, MLP) of every block, the encoder's included
    te_modules = [m for m in model.decoder.modules() if isinstance(m, (te.Linear, te.LayerNormLinear))]
    latent = model.latent
    return {
        "loss": loss,
        "te_fp8": [bool(getattr(m, "fp8", False)) for m in te_modules],
        "readout_grad": (latent.readout.weight.grad.dtype, bool(latent.readout.weight.grad.isfinite().all())),
        "post_sampler_grad": bool(latent.post_sampler.grad.isfinite().all()),
    }


@pytest.mark.gpu
def test_fp8_step_on_gpu(ranks):
    """On a GPU with Transformer Engine: one FP8 (hybrid, delayed) step of the tiny Free
    Transformer; the decoder's TE layers ran in FP8, the latent's readout got a finite bf16
    gradient outside it."""
    pytest.importorskip("transformer_engine", reason="needs Transformer Engine")
    (result,) = ranks(1, _fp8_step)
    assert result["te_fp8"] and all(result["te_fp8"])
    assert result["readout_grad"] == (torch.bfloat16, True)
    assert result["post_sampler_grad"]
    assert result["loss"] == result["loss"]  # not NaN

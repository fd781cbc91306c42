"""Single-rank properties of the Free Transformer on megatron-core: the encoder is non-causal,
prior/given latents keep the decoder causal, given codes make the forward deterministic, a
baseline's weights load into the decoder, and the injection must start a pipeline stage."""

import pytest
import torch

from megatron_free.config import ConfigError
from tests.tiny import MICRO_BATCH, SEQ, VOCAB, build_tiny_model, tiny_config


def _properties():
    from megatron_free.model.latent import LatentControl
    from megatron_free.model.model import FreeTransformerModel

    torch.manual_seed(0)
    model = build_tiny_model(tiny_config())
    model.eval()
    tokens = torch.randint(0, VOCAB, (MICRO_BATCH, SEQ))
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    positions = torch.arange(SEQ).expand(MICRO_BATCH, SEQ)
    seeds = torch.tensor([5, 6])
    codes = torch.randint(0, 2**6, (MICRO_BATCH, SEQ))

    bit_logits = []
    hook = model.latent.readout.register_forward_hook(lambda m, i, o: bit_logits.append(o.detach()))

    def logits(toks, control):
        with torch.no_grad():
            return model(toks, positions, None, latent_seeds=seeds, latent=control)

    out = {}
    logits(tokens, LatentControl("posterior"))
    logits(changed, LatentControl("posterior"))
    hook.remove()
    # bit logits are [s, b, H]: position 0 of the encoder sees the last token.
    out["posterior_bits_first_changed"] = not torch.equal(bit_logits[0][0], bit_logits[1][0])
    for mode in ("prior", "given"):
        control = LatentControl(mode, codes=codes if mode == "given" else None)
        a, b = logits(tokens, control), logits(changed, control)
        out[f"{mode}_early_equal"] = torch.equal(a[:, :-1], b[:, :-1])
        out[f"{mode}_last_changed"] = not torch.equal(a[:, -1], b[:, -1])
    given = LatentControl("given", codes=codes)
    out["given_deterministic"] = torch.equal(logits(tokens, given), logits(tokens, given))
    other = codes.clone()
    other[:, 3] = (other[:, 3] + 1) % 2**6
    out["codes_matter"] = not torch.equal(logits(tokens, given), logits(tokens, LatentControl("given", codes=other)))

    baseline = FreeTransformerModel(tiny_config(baseline=True), vocab_size=VOCAB, max_sequence_length=SEQ)
    missing, unexpected = model.load_state_dict(baseline.state_dict(), strict=False)
    out["baseline_missing_only_latent"] = bool(missing) and all(".latent." in k for k in missing)
    out["baseline_unexpected"] = list(unexpected)
    free_state = model.state_dict()
    out["decoder_loaded"] = all(
        torch.equal(free_state[k], v) for k, v in baseline.state_dict().items() if not k.endswith("_extra_state")
    )
    return out


@pytest.fixture(scope="module")
def properties():
    from tests.harness import run_ranks

    return run_ranks(1, _properties)[0]


def test_encoder_is_non_causal(properties):
    """Under posterior Z the encoder's bit logits at position 0 depend on the last token."""
    assert properties["posterior_bits_first_changed"]


@pytest.mark.parametrize("mode", ["prior", "given"])
def test_decoder_stays_causal_without_encoder(properties, mode):
    """Under prior or given Z, changing the last token changes only the last position's logits."""
    assert properties[f"{mode}_early_equal"]
    assert properties[f"{mode}_last_changed"]


def test_given_codes_deterministic(properties):
    """With given codes the forward is deterministic, and the codes change the logits."""
    assert properties["given_deterministic"]
    assert properties["codes_matter"]


def test_baseline_weights_load_into_free_decoder(properties):
    """A baseline state dict loads into the Free Transformer: only latent.* keys are missing."""
    assert properties["baseline_missing_only_latent"]
    assert properties["baseline_unexpected"] == []
    assert properties["decoder_loaded"]


def test_injection_must_start_a_pipeline_stage():
    """PP3 over 6 layers puts stages at 1, 3, 5: injection at 4 is refused with the flags named."""
    from megatron_free.model.model import validate_injection_boundary

    validate_injection_boundary(tiny_config(pp=2))  # 4 layers: stage 2 starts at block 3 = L/2+1
    with pytest.raises(ConfigError, match="--injection-layer 4 must be the first layer"):
        validate_injection_boundary(tiny_config(pp=3, num_layers=6))

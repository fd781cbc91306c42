"""The Free Transformer and its baseline give the same loss and gradients under TP, SP, PP and
TP x PP as on one rank (same weights from the same seed, same batches, same sampled codes)."""

import pytest
from torch.testing import assert_close

from tests.tiny import build_tiny_model, full_tensors, run_step, tiny_batches, tiny_config


def _loss_and_grads(tp, pp, sp, baseline):
    model = build_tiny_model(tiny_config(tp, pp, sp, baseline=baseline))
    loss = run_step(model, tiny_batches(2))
    return loss, full_tensors(model, use_grad=True), full_tensors(model, use_grad=False)


def _merged(results):
    loss = results[0][0]
    assert all(r[0] == pytest.approx(loss, rel=1e-6) for r in results)
    grads, weights = {}, {}
    for _, g, w in results:
        grads.update(g)
        weights.update(w)
    return loss, grads, weights


@pytest.fixture(scope="module")
def references(request):
    """Single-rank loss/grads/weights for the Free Transformer and the baseline."""
    from tests.harness import run_ranks

    return {baseline: _merged(run_ranks(1, _loss_and_grads, 1, 1, False, baseline)) for baseline in (False, True)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "tp,pp,sp",
    [(2, 1, False), (2, 1, True), (1, 2, False), (2, 2, False)],
    ids=["tp2", "tp2-sp", "pp2", "tp2xpp2"],
)
@pytest.mark.parametrize("baseline", [False, True], ids=["free", "baseline"])
def test_layout_matches_single_rank(ranks, references, tp, pp, sp, baseline):
    """Loss, every gradient and every initial weight equal the single-rank run."""
    loss, grads, weights = _merged(ranks(tp * pp, _loss_and_grads, tp, pp, sp, baseline))
    ref_loss, ref_grads, ref_weights = references[baseline]
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in ref_weights:
        assert_close(weights[name], ref_weights[name], rtol=0, atol=0, msg=name)
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)

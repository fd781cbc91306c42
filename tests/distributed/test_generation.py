"""Generation under model parallelism equals one rank's (same weights: the init is
layout-independent), and the toy study's groups come out whole on every rank."""

import pytest
import torch
import torch.distributed as dist

from tests.tiny import tiny_args

PROMPT = torch.tensor([[12, 28], [12, 28], [5, 28]])  # "K>", "K>", "D>" in the toy vocabulary
NEW_TOKENS = 10


def _generate(extra):
    """Greedy tokens for given codes, and toy-study groups (temperature 1), on this rank."""
    from megatron_free.inference.generate import generate
    from megatron_free.inference.toy_study import sample_groups
    from megatron_free.pretrain import setup

    args = tiny_args(dist.get_world_size(), *extra)
    chunks, *_, tokenizer = setup(args)
    codes = torch.randint(0, 2**args.latent_bits, (3, 2 + NEW_TOKENS), generator=torch.Generator().manual_seed(1))
    greedy = generate(chunks, PROMPT, NEW_TOKENS, top_k=1, codes=codes, vocab_size=tokenizer.vocab_size)
    groups = sample_groups(chunks, tokenizer, "K", 3, seed=7, latent_bits=args.latent_bits)
    return greedy, groups


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout",
    [
        ("--tensor-model-parallel-size", "2"),
        ("--pipeline-model-parallel-size", "2"),
    ],
    ids=["tp2", "pp2"],
)
def test_generation_under_model_parallelism_equals_one_rank(ranks, layout):
    ((reference, reference_groups),) = ranks(1, _generate, [])
    results = ranks(2, _generate, list(layout))
    for greedy, groups in results:  # every rank returns the whole result
        assert greedy.shape == (3, 2 + NEW_TOKENS)
        assert torch.equal(greedy, reference)
        assert groups.keys() == {"shared Z", "independent Z"}
        for name, texts in groups.items():
            assert len(texts) == 3 and all(t.startswith("K>") for t in texts), texts
    assert results[0][1] == results[1][1]
    # sampling at temperature 1 with the same seeds: the same texts as on one rank
    assert results[0][1] == reference_groups

"""Checkpoints describe their model (model/description.py): written once, read by resume checks,
inference, the HF export and --init-from-baseline; checkpoints from before the description, which
stored the run's flags instead, still load."""

import subprocess
import sys

import pytest
import torch

from tests.harness import run_ranks
from tests.tiny import full_tensors, tiny_args


def _train(save, *extra):
    from megatron_free.pretrain import run

    run(tiny_args(torch.distributed.get_world_size(), "--train-iters", "2", "--save", save, *extra))


def _setup_weights(*extra):
    """The full weights of a run right after setup (initialization and --init-from-baseline)."""
    from megatron_free.pretrain import setup

    chunks, *_ = setup(tiny_args(torch.distributed.get_world_size(), *extra))
    return full_tensors(chunks[0].module, use_grad=False)


def _loaded(load):
    from megatron_free.inference.checkpoint import load_for_inference

    model, description, tokenizer, dtype, iteration = load_for_inference(load)
    return description, type(tokenizer).__name__, dtype, iteration, full_tensors(model, use_grad=False)


def _to_legacy_format(checkpoint):
    """Rewrites a checkpoint's common state as checkpoints before the description were: the run's
    flags under "args", no description, layout or weights dtype."""
    from megatron_free.arguments import parse_args
    from tests.tiny import TINY_PRETRAIN_ARGV

    path = checkpoint / "common.pt"
    common = torch.load(path, weights_only=False)
    args = parse_args([*TINY_PRETRAIN_ARGV, "--train-iters", "2"], world_size=1)
    args.padded_vocab_size = common["model_description"]["padded_vocab_size"]
    args.tokenizer_type = None  # as the toy runs of then, which named no tokenizer
    for key in ("model_description", "layout", "weights_dtype"):
        del common[key]
    common["args"] = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))}
    torch.save(common, path)


@pytest.fixture(scope="module")
def tp2_run(tmp_path_factory):
    save = tmp_path_factory.mktemp("description") / "ckpt"
    run_ranks(2, _train, str(save), "--tensor-model-parallel-size", "2")
    return save


def test_the_checkpoint_describes_its_model(tp2_run):
    common = torch.load(tp2_run / "iter_0000002" / "common.pt", weights_only=False)
    assert "args" not in common and common["layout"] == [2, 1, 1] and common["weights_dtype"] == "float32"
    description = common["model_description"]
    assert (description["num_layers"], description["hidden_size"], description["latent_bits"]) == (4, 32, 6)
    assert (description["vocab_size"], description["padded_vocab_size"]) == (30, 32)
    assert description["tokenizer_type"] == "CharacterTokenizer" and description["tie_embeddings"]


@pytest.mark.slow
def test_a_checkpoint_from_before_the_description_still_loads(tp2_run, tmp_path):
    """Inference, the HF export and a resume read the older format, with the same weights."""
    (new,) = run_ranks(1, _loaded, str(tp2_run))
    legacy = tmp_path / "ckpt"
    subprocess.run(["cp", "-r", str(tp2_run), str(legacy)], check=True)
    _to_legacy_format(legacy / "iter_0000002")
    (old,) = run_ranks(1, _loaded, str(legacy))
    assert old[0].shape_differences(new[0]) == [] and old[1:4] == new[1:4] == ("CharacterTokenizer", torch.float32, 2)
    for name, weight in new[4].items():
        assert torch.equal(old[4][name], weight), name
    result = subprocess.run(
        [sys.executable, "-m", "megatron_free.convert.cli", "--load", str(legacy), "--output", str(tmp_path / "hf")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    run_ranks(
        2,
        _train,
        str(legacy),
        "--tensor-model-parallel-size",
        "2",
        "--load",
        str(legacy),
        "--train-iters",
        "3",
        "--use-checkpoint-opt_param-scheduler",
    )
    assert (legacy / "latest_checkpointed_iteration.txt").read_text().strip() == "3"


@pytest.mark.slow
def test_init_from_baseline_takes_the_decoder_and_checks_its_shapes(tmp_path):
    """--init-from-baseline: every decoder weight is the baseline checkpoint's, the latent keeps its
    fresh initialization; a baseline of another shape, or a Free Transformer checkpoint, is refused."""
    baseline = tmp_path / "baseline"
    run_ranks(1, _train, str(baseline), "--baseline")
    (base,) = run_ranks(1, _loaded, str(baseline))
    (fresh,) = run_ranks(1, _setup_weights)
    (init,) = run_ranks(1, _setup_weights, "--init-from-baseline", str(baseline))
    latent = [name for name in init if ".latent." in name]
    assert latent and all(torch.equal(init[name], fresh[name]) for name in latent)
    decoder = [name for name in init if ".latent." not in name]
    assert decoder and all(torch.equal(init[name], base[4][name]) for name in decoder)

    # The rank's CheckpointError comes back as the harness's RuntimeError with its traceback.
    with pytest.raises(RuntimeError, match=r"CheckpointError: .* checkpoint has --hidden-size 32, this run 64"):
        run_ranks(
            1, _setup_weights, "--init-from-baseline", str(baseline), "--hidden-size", "64", "--ffn-hidden-size", "128"
        )
    free = tmp_path / "free"
    run_ranks(1, _train, str(free))
    with pytest.raises(RuntimeError, match="CheckpointError: .*not a baseline checkpoint"):
        run_ranks(1, _setup_weights, "--init-from-baseline", str(free))

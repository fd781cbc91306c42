"""The report of examples/toy_experiment.py: the paper's findings tested on the measures, and the
markdown and figures written from a results dict (no training here)."""

import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "toy_experiment.py"


@pytest.fixture(scope="module")
def toy():
    spec = importlib.util.spec_from_file_location("toy_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measures(well_formed=0.95, position=0.02, distance=19.0, noise=0.03):
    return {
        "groups": [["K>" + "_" * 64] * 2],
        "intervals": {  # as measure_groups writes them, here a made-up +-0.05 around each measure
            key: (value - 0.05, value + 0.05)
            for key, value in (
                ("well_formed", well_formed),
                ("position_agreement", position),
                ("position_distance", distance),
                ("noise_jaccard", noise),
            )
        },
        "well_formed": well_formed,
        "position_agreement": position,
        "position_distance": distance,
        "noise_identical": 0.0,
        "noise_jaccard": noise,
        "pairs": 28,
        "position_pairs": 28,
    }


def run(kappa, independent, shared, kl=None):
    validation = {"lm loss": 0.29} if kappa is None else {"kl": kl, "posterior lm loss": 0.25, "prior lm loss": 0.3}
    return {
        "kappa": kappa,
        "train": {"validation": validation, "ms_per_iteration": 400.0},
        "independent": independent,
        "shared": shared,
    }


def paper_like_results():
    """Measures shaped as the paper reports them."""
    return {
        "baseline": run(None, measures(), measures()),
        "kappa=1/64": run(1 / 64, measures(), measures(), kl=0.01),
        "kappa=1/8": run(1 / 8, measures(), measures(position=0.9, distance=0.5), kl=0.1),
        "kappa=1": run(1.0, measures(), measures(position=0.95, distance=0.2, noise=0.8), kl=0.9),
        "kappa=8": run(
            8.0, measures(well_formed=0.3), measures(well_formed=0.35, position=1.0, distance=0.0, noise=0.95), kl=7.9
        ),
    }


def test_paper_like_measures_match_every_finding(toy):
    lines = toy.verdicts(paper_like_results())
    assert len(lines) == 4 and all(line.endswith("**matches**.") for line in lines), lines


def test_carried_yes_partly_no(toy):
    """yes: shared >= 0.5 and >= independent + 0.3; partly: >= independent + 0.1; else no."""
    assert toy.carried(run(1.0, measures(position=0.05), measures(position=0.6)), "position") == "yes"
    assert toy.carried(run(1.0, measures(position=0.05), measures(position=0.23)), "position") == "partly"
    assert toy.carried(run(1.0, measures(position=0.05), measures(position=0.1)), "position") == "no"
    assert toy.carried(run(1.0, measures(noise=0.5), measures(noise=0.7)), "noise") == "partly"  # < +0.3


def test_unused_latent_does_not_match_the_paper_at_one_bit(toy):
    results = paper_like_results()
    results["kappa=1"] = run(1.0, measures(), measures(position=0.23), kl=0.8)
    line = next(x for x in toy.verdicts(results) if x.startswith("- kappa = 1 bit"))
    assert re.search(r"position carried: partly \(.*\); noise carried: no \(", line)
    assert "**does not match** (position: partly, paper: yes; noise: no, paper: yes)" in line


def test_training_log_numbers_are_read(toy, tmp_path):
    """The last validation and the mean time per iteration, from pretrain's stamped log lines."""
    log = tmp_path / "train.log"
    log.write_text(
        "[2026-12-02 12:23:08] iteration      100/    8000 | consumed samples:         1600 | "
        "elapsed time per iteration (ms): 210.2 | lm loss: 8.3E-01\n"
        "[2026-12-02 12:27:30] validation at iteration 1000 | iwae lm loss: 3.5E-01 | kl: 1.2E-01 | "
        "posterior lm loss: 3.02E-01 | prior lm loss: 3.03E-01\n"
        "[2026-12-02 12:27:31] iteration      200/    8000 | elapsed time per iteration (ms): 189.8 | lm loss: 5E-01\n"
        "  last validation (iteration 8000): iwae lm loss: 1E-01 | kl: 1E-01\n"
    )
    parsed = toy.parse_train_log(log)
    assert parsed["validation"] == {
        "iteration": 1000,
        "iwae lm loss": 0.35,
        "kl": 0.12,
        "posterior lm loss": 0.302,
        "prior lm loss": 0.303,
    }
    assert parsed["ms_per_iteration"] == pytest.approx(200.0)


def test_every_model_trains_with_the_given_seed_and_length(toy, tmp_path):
    args = SimpleNamespace(train_iters=500, eval_interval=100, seed=7, latent_bits=12)
    for name, kappa in toy.RUNS:
        cmd = toy.train_command(args, kappa, tmp_path / "checkpoints")
        assert cmd.count("--seed") == 1 and cmd[cmd.index("--seed") + 1] == "7", name
        assert cmd[cmd.index("--train-iters") + 1] == "500", name
        assert ("--baseline" in cmd) == (kappa is None), name
        if kappa is not None:
            assert cmd[cmd.index("--free-bits") + 1] == repr(kappa), name


def test_report_and_figures_are_written(toy, tmp_path):
    pytest.importorskip("matplotlib")
    results = paper_like_results()
    meta = {
        "date": "2026-11-23",
        "machine": "2 CPU cores",
        "command": "python examples/toy_experiment.py",
        "wall_minutes": 21.8,
        "reuse_minutes": None,
        "layers": 4,
        "hidden": 64,
        "latent_bits": 9,
        "train_iters": 3000,
        "seed": 7,
        "batch": 16,
        "lr": 0.002,
        "groups": 1,
        "group_size": 2,
        "seconds": {f"{name} {kind}": 1.0 for name in results for kind in ("train", "evaluate")},
    }
    meta["notes"] = toy.format_notes(meta, results["baseline"])
    out = tmp_path / "toy"
    out.mkdir()
    toy.samples_figure(results, out / "samples.png")
    toy.measures_figure(results, out / "measures.png")
    toy.write_markdown(results, meta, tmp_path / "toy.md", out)
    text = (tmp_path / "toy.md").read_text()
    assert "![samples](toy/samples.png)" in text and "| kappa=8 | 8 |" in text
    assert "## kappa = 1/8: the exploration" in text and "3000 iterations of batch 16" in text
    assert "training seed 7." in text
    assert (out / "samples.png").stat().st_size > 10_000 and (out / "measures.png").stat().st_size > 10_000


def test_verdicts_show_each_measure_with_its_interval_over_the_groups(toy):
    """Half the shared-Z groups are copies (position and noise agree), half independent data
    samples: the rates come from the measures, the intervals from resampling those groups."""
    from megatron_free.data.toy import generate_toy_sample
    from megatron_free.inference.toy_study import summarize_groups

    texts = [generate_toy_sample((3, i)).text for i in range(160)]
    independent = [texts[i : i + 8] for i in range(0, 80, 8)] * 2
    shared = [[t] * 8 for t in texts[80:90]] + [texts[i : i + 8] for i in range(90, 160, 7)][:10]
    results = paper_like_results()
    results["kappa=1"] = run(1.0, toy.measure_groups(independent), toy.measure_groups(shared), kl=0.9)
    line = next(x for x in toy.verdicts(results) if x.startswith("- kappa = 1 bit"))
    numbers = r"(\d\.\d\d) \[(\d\.\d\d), (\d\.\d\d)\]"
    position = re.search(rf"position carried: (\w+) \(shared Z {numbers}, independent {numbers}\)", line)
    assert position, line
    rate, low, high = map(float, position.groups()[1:4])
    assert rate == pytest.approx(summarize_groups(shared)["position_agreement"], abs=0.005)
    assert low < rate - 0.1 and high > rate + 0.1  # 20 groups, half of them agreeing
    assert re.search(rf"noise carried: \w+ \(shared Z {numbers}, independent {numbers}\)", line)
    assert re.search(rf"well-formed rate drops: no \(independent Z 1.00 \[1.00, 1.00\], baseline {numbers}\)", line)


def test_position_is_not_judged_on_too_few_well_formed_pairs(toy):
    """Broken samples at kappa = 8 leave no well-formed pairs: position n/a, not "no"."""
    results = paper_like_results()
    broken = measures(well_formed=0.02, position=float("nan"), distance=float("nan"), noise=0.08)
    results["kappa=8"] = run(8.0, {**broken, "position_pairs": 0}, {**measures(noise=0.9), "position_pairs": 1}, kl=7.9)
    line = next(x for x in toy.verdicts(results) if x.startswith("- kappa = 8 bit"))
    assert re.search(r"position carried: n/a \(.*\); noise carried: yes \(", line)
    assert "**matches where measured** (position: n/a, paper: yes)" in line
    results["kappa=8"]["shared"]["noise_jaccard"] = 0.3
    line = next(x for x in toy.verdicts(results) if x.startswith("- kappa = 8 bit"))
    assert "**partly matches** (position: n/a, paper: yes; noise: partly, paper: yes)" in line


def test_reuse_refuses_checkpoints_trained_with_other_flags(toy, tmp_path):
    """--reuse reports the command's setup, so it must be the one the checkpoints were trained with."""
    trained = SimpleNamespace(train_iters=500, eval_interval=100, seed=7, latent_bits=12)
    for name, kappa in toy.RUNS:
        folder = toy.run_dir(tmp_path / "moved", name)
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("500\n")
        command = toy.train_command(trained, kappa, tmp_path / "before" / "checkpoints")
        (folder / "train.log").write_text(" ".join(command) + "\niteration 1/500\n")
    same = ["--train-iters", "500", "--eval-interval", "100", "--seed", "7"]
    log = toy.run_dir(tmp_path / "moved", "baseline") / "train.log"
    for name, kappa in toy.RUNS:  # the same flags: a moved work dir (another --save) still fits
        wanted = toy.train_command(trained, kappa, tmp_path / "moved" / "checkpoints")
        assert toy.reuse_mismatch(toy.run_dir(tmp_path / "moved", name) / "train.log", wanted) is None, name
    base = ["--reuse", "--work-dir", str(tmp_path / "moved"), "--out", str(tmp_path / "out")]
    seed_differs = f"^--reuse: {re.escape(str(log))} was trained with --seed 7, this command asks --seed 8;"
    with pytest.raises(SystemExit, match=seed_differs):
        toy.main([*base, *same[:-1], "8"])
    with pytest.raises(SystemExit, match="was trained with --latent-bits 12, this command asks --latent-bits 9;"):
        toy.main([*base, *same, "--latent-bits", "9"])
    log.write_text("iteration 1/500\n")
    with pytest.raises(SystemExit, match="is not the training command this script writes there"):
        toy.main([*base, *same])
    log.unlink()
    with pytest.raises(SystemExit, match=f"^--reuse: no {re.escape(str(log))} beside the checkpoints"):
        toy.main([*base, *same])

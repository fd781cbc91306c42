"""Unit tests for the benchmark command (benchmarks/__main__.py, benchmarks/training_step.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import training_step
from benchmarks.__main__ import mapper_verdicts

REPO = Path(__file__).parents[2]


def test_step_config_spec_round_trip():
    """Scope: a config spec parses, fills Llama-style defaults and prints back as the same spec."""
    config = training_step.parse_config("L8-D512-T256-B4-H16")
    assert (config.ffn_hidden_size, config.num_attention_heads, config.num_query_groups) == (1408, 8, 2)
    assert config.name == "L8-D512-T256-B4-H16"
    custom = training_step.parse_config("L28-D1536-T2048-B2-H16-V131072-F8960-A12-G2-M8")
    assert training_step.parse_config(custom.name) == custom
    assert custom.tokens_per_step == 2048 * 2 * 8


@pytest.mark.parametrize("spec, named", [("L8-D512-T256-B4", "missing H"), ("L8-D512-X3-T256-B4-H16", "'X3'")])
def test_step_config_spec_errors_name_the_part(spec, named):
    """Scope: a bad spec raises a one-line error naming the missing or bad part."""
    with pytest.raises(ValueError, match=named):
        training_step.parse_config(spec)


def test_analytic_ratio_counts_encoder_and_mapper():
    """Scope: the FLOP ratio beside the measurement is 1 + encoder share + mapper-backward share."""
    row = training_step.analytic(training_step.parse_config("L8-D512-T256-B4-H16"))
    assert row["flop_ratio"] == pytest.approx(1 + row["flop_share_encoder"] + row["flop_share_mapper_backward"])
    # the mapper's T x C x D backward: 2 C D FLOPs per token
    assert row["flops_per_token"]["free"]["mapper_backward"] == 2 * 2**16 * 512


def test_mapper_verdicts_without_weight_grad():
    """Scope: the target check, with and without the C x D weight gradient both variants hold."""
    rows = [
        {"variant": "ours", "tokens": 1024, "num_bits": 16, "hidden": 512, "time_ms": 10.0, "peak_mem_mib": 160.0},
        {"variant": "dense", "tokens": 1024, "num_bits": 16, "hidden": 512, "time_ms": 20.0, "peak_mem_mib": 1000.0},
    ]
    (v,) = mapper_verdicts(rows)
    assert v["memory_x"] == pytest.approx(6.25) and not v["memory_target_met"]
    assert v["weight_grad_mib"] == 128  # 65536 x 512 fp32
    assert v["memory_x_without_weight_grad"] == pytest.approx(872 / 32) and v["memory_target_met_without_weight_grad"]
    assert v["time_x"] == 2 and v["time_target_met"]


@pytest.mark.slow
def test_quick_run_writes_every_part(tmp_path):
    """Scope: `python -m benchmarks --quick` end to end in a subprocess (tiny sizes, CPU), its tables and JSON."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for title in ("(a) training step", "(b) binary mapper", "(c) preprocessing", "(d) GPU throughput"):
        assert title in proc.stdout
    results = json.loads(out.read_text())

    meta = results["meta"]
    assert meta["quick"] and meta["command"].startswith("python -m benchmarks --quick")
    for key in ("date", "load_average_start", "load_average_end"):
        assert key in meta
    for key in ("cpu_model", "cpus", "torch", "megatron_core"):
        assert key in meta["machine"]

    (step,) = results["step"]
    for model in ("free", "baseline"):
        assert step[model]["time_s"] > 0 and step[model]["cpu_s"] > 0 and step[model]["mem_mib"] > 0
        assert step[model]["tokens_per_s"] > 0
        assert len(step[model]["time_s_all"]) == step["steps"]
    # the analytic counts beside the ratios are the built models' counts
    assert step["free"]["parameters"] == step["parameters"]["free"] > step["baseline"]["parameters"]
    assert step["baseline"]["parameters"] == step["parameters"]["baseline"]
    for ratio in ("time_ratio", "time_ratio_paired", "cpu_time_ratio", "mem_ratio"):
        assert step[ratio] > 0
    assert step["flop_ratio"] > 1 and step["alternating"]

    assert {r["variant"] for r in results["mapper"]} == {"ours", "dense"}
    for row in results["mapper"]:
        assert row["time_ms"] > 0 and "peak_mem_mib" in row
    (verdict,) = results["mapper_verdicts"]
    assert {"memory_x", "memory_x_without_weight_grad", "time_x", "time_target_met"} <= set(verdict)

    assert [r["workers"] for r in results["preprocess"]] == [1, 2]
    assert results["preprocess"][0]["tokens"] == results["preprocess"][1]["tokens"] > 0
    assert all(r["tokens_per_s"] > 0 for r in results["preprocess"])

    gpu = results["gpu"]
    if "skipped" in gpu[0]:
        assert gpu[0]["skipped"]  # no CUDA (or no megatron-core): the reason is recorded
    else:
        assert gpu[0]["free"]["tokens_per_s"] > 0

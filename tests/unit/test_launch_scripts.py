"""Launch scripts and the dry-run planner: every script's bash syntax, and the planner on the
exact arguments each script (and each array task of a sweep) passes, at the world size its
#SBATCH lines ask for, so a typo or an inconsistent size fails here and not on 256 GPUs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_free.arguments import ArgumentError, parse_args
from megatron_free.planner import GIB, pipeline_stages, plan

REPO = Path(__file__).resolve().parents[2]
LAUNCH_DIR = REPO / "launch_scripts"
SHELL_SCRIPTS = sorted(LAUNCH_DIR.glob("*.sh"))
# preprocess_*.sh preprocess data on CPU nodes (tests/unit/test_preprocess_launch.py), they launch no training
LAUNCH_SCRIPTS = [p for p in SHELL_SCRIPTS if p.name != "common.sh" and not p.name.startswith("preprocess_")]
SLURM_SCRIPTS = [p for p in LAUNCH_SCRIPTS if "#SBATCH" in p.read_text()]


def sbatch_options(path: Path) -> dict:
    """{option: value} of a script's `#SBATCH --option=value` (or `--option value`) lines."""
    options = {}
    for line in path.read_text().splitlines():
        match = re.match(r"#SBATCH\s+--([\w-]+)(?:[=\s]+(\S+))?", line)
        if match:
            options[match.group(1)] = match.group(2) or True
    return options


def array_indices(spec: str) -> list[int]:
    """'0-4', '0,2,5' or '0-4%2' -> the task ids."""
    indices = []
    for part in spec.split("%")[0].split(","):
        first, _, last = part.partition("-")
        indices.extend(range(int(first), int(last or first) + 1))
    return indices


def script_world_size(path: Path) -> int:
    options = sbatch_options(path)
    return int(options["nodes"]) * int(options["gpus-per-node"])


def launch_cases():
    for script in LAUNCH_SCRIPTS:
        options = sbatch_options(script)
        tasks = array_indices(options["array"]) if "array" in options else [None]
        for task in tasks:
            yield pytest.param(script, task, id=script.stem + ("" if task is None else f"[{task}]"))


def launch_env(tmp_path: Path, mode: str) -> dict:
    """This environment without slurm's or the launch scripts' variables, in LAUNCH_MODE mode."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SLURM_")
        and k
        not in (
            "DATA_PATH",
            "TOKENIZER_MODEL",
            "MOCK_DATA",
            "CONFIG",
            "RUN_PREFIX",
            "REPO_DIR",
            "SWEEP_VALUE",
            "TRAIN_ITERS",
            "CONTAINER_IMAGE",
        )
    }
    clean.update(LAUNCH_MODE=mode, DATA_ROOT=str(tmp_path / "data"), OUTPUT_ROOT=str(tmp_path / "runs"))
    # The scripts run `python`: this interpreter's, as in an activated environment.
    clean["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), clean.get("PATH", "")])
    return clean


def printed_args(script: Path, tmp_path: Path, task=None, env=None) -> tuple[int, list[str]]:
    """(world size, pretrain argv) that a script would launch, from LAUNCH_MODE=print."""
    clean = launch_env(tmp_path, "print")
    if task is not None:
        clean.update(
            SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_MAX=str(max(array_indices(sbatch_options(script)["array"])))
        )
    clean.update(env or {})
    result = subprocess.run(["bash", str(script)], cwd=REPO, env=clean, capture_output=True, text=True, timeout=30)
    if result.returncode:
        raise ArgumentError(result.stderr.strip())
    first, *argv = result.stdout.splitlines()
    assert first.startswith("world_size "), result.stdout
    return int(first.split()[1]), argv


def flag_value(argv: list[str], flag: str):
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1] if flag in argv else None


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    """Every .sh parses (bash -n)."""
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script", SLURM_SCRIPTS, ids=lambda p: p.stem)
def test_sbatch_header(script):
    """Slurm scripts: one task per node on whole nodes, requeue on preemption, USR1 before the
    time limit (common.sh traps it), and a log that survives requeues."""
    options = sbatch_options(script)
    assert options["ntasks-per-node"] == "1"
    assert options["gpus-per-node"] == "8"
    for flag in ("requeue", "exclusive"):
        assert options.get(flag) is True, f"{script.name} lacks #SBATCH --{flag}"
    assert options["signal"].startswith("B:USR1@")
    assert options["open-mode"] == "append"


@pytest.mark.parametrize("script, task", launch_cases())
def test_script_plans(script, task, tmp_path):
    """The planner accepts each run as launched, at the world size of its #SBATCH lines (8 and
    2 for the local scripts), and its memory estimate fits an 80 GB H100."""
    world_size, argv = printed_args(script, tmp_path, task)
    if script in SLURM_SCRIPTS:
        assert world_size == script_world_size(script)
    args = parse_args(argv, world_size=world_size)
    result = plan(args)
    assert result["layout"]["world_size"] == world_size
    assert result["memory"]["peak"]["total"] <= 80 * GIB
    assert result["tokens"]["train_iters"] == args.train_iters


PAPER_RUNS = {
    # script: (world size, token budget, sweep), spec "Models in the paper" and the issue
    "free_1p5b_47b": (32, 47e9, ["baseline", "0.25", "0.5", "1", "2"]),
    "free_8b_200b": (256, 200e9, ["baseline", "0.25", "0.5", "1", "2"]),
    "free_8b_1t": (256, 1000e9, ["baseline", "0.5"]),
}
ARCHITECTURES = {
    # layers, hidden, heads, query groups, tied embeddings; FFN 14336 for 8B (Llama-3 8B)
    "free_1p5b": dict(
        num_layers=28,
        hidden_size=1536,
        num_attention_heads=12,
        num_query_groups=2,
        untie_embeddings_and_output_weights=False,
        injection_layer=15,
    ),
    "free_8b": dict(
        num_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_query_groups=8,
        ffn_hidden_size=14336,
        injection_layer=17,
    ),
}


@pytest.mark.parametrize("name", sorted(PAPER_RUNS))
def test_paper_sweeps(name, tmp_path):
    """The slurm scripts launch the paper's runs: model, GPUs, tokens, baseline and kappa values;
    bf16 with FP8 (hybrid) through Transformer Engine; a 2^17 vocabulary; AdamW + cosine."""
    script = LAUNCH_DIR / f"{name}.sh"
    world_size, budget, sweep = PAPER_RUNS[name]
    assert script_world_size(script) == world_size
    assert array_indices(sbatch_options(script)["array"]) == list(range(len(sweep)))
    for task, value in enumerate(sweep):
        _, argv = printed_args(script, tmp_path, task)
        args = parse_args(argv, world_size=world_size)
        if value == "baseline":
            assert args.baseline
        else:
            assert not args.baseline and args.free_bits == float(value)
        assert f"{name}_{'baseline' if value == 'baseline' else 'kappa' + value}" in flag_value(argv, "--save")
        tokens = args.train_samples * args.seq_length
        assert budget <= tokens < budget + args.seq_length
        model = Path(flag_value(argv, "--config")).stem
        for field, expected in ARCHITECTURES[model].items():
            assert getattr(args, field) == expected, (model, field)
        assert (args.bf16, args.fp8_format, args.transformer_impl) == (True, "hybrid", "transformer_engine")
        assert (args.vocab_size, args.latent_bits) == (2**17, 16)
        assert args.lr_decay_style == "cosine" and args.adam_beta2 == 0.95
        assert args.min_lr == pytest.approx(args.lr / 10)
        assert args.exit_signal_handler and args.save_interval


def test_every_launch_loads_its_save_directory(tmp_path):
    """A requeued job resumes, a first one starts fresh: --load is the --save directory, as in
    Megatron-LM's launch scripts (pretrain starts fresh when it holds no checkpoint yet)."""
    script = LAUNCH_DIR / "free_8b_1t.sh"
    _, argv = printed_args(script, tmp_path, task=1)
    assert flag_value(argv, "--load") == flag_value(argv, "--save")
    assert "free_8b_1t_kappa" in flag_value(argv, "--save")


def test_plan_covers_the_whole_sweep(tmp_path):
    """LAUNCH_MODE=plan outside slurm plans every array task, then one summary line per run;
    SWEEP_VALUE plans that run alone."""
    script = LAUNCH_DIR / "free_8b_1t.sh"
    result = subprocess.run(
        ["bash", str(script)], cwd=REPO, env=launch_env(tmp_path, "plan"), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "=== array task 0: free_8b_1t_baseline ===" in out
    assert "=== array task 1: free_8b_1t_kappa0.5 ===" in out
    assert out.count("plan: baseline decoder") == 1 and out.count("plan: Free Transformer") == 1
    summary = dict(re.findall(r"^(free_8b_1t_\S+) +([0-9.]+) GiB, ", out, re.M))
    assert set(summary) == {"free_8b_1t_baseline", "free_8b_1t_kappa0.5"}
    assert float(summary["free_8b_1t_kappa0.5"]) > float(summary["free_8b_1t_baseline"])

    one = subprocess.run(
        ["bash", str(script)],
        cwd=REPO,
        env={**launch_env(tmp_path, "plan"), "SWEEP_VALUE": "0.5"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one.returncode == 0, one.stderr
    assert "plan: Free Transformer" in one.stdout and "plan: baseline decoder" not in one.stdout
    assert "=== the sweep" not in one.stdout


def test_array_larger_than_sweep_fails(tmp_path):
    """An --array range with more tasks than sweep values stops before launching anything."""
    script = LAUNCH_DIR / "free_8b_1t.sh"
    with pytest.raises(ArgumentError, match="SWEEP has 2"):
        printed_args(script, tmp_path, task=0, env={"SLURM_ARRAY_TASK_MAX": "2"})


def test_broken_script_size_names_the_flag(tmp_path):
    """A script edited to a node count its layout cannot use fails with the flag named."""
    broken = tmp_path / "free_8b_200b.sh"
    text = (LAUNCH_DIR / "free_8b_200b.sh").read_text()
    broken.write_text(text.replace("#SBATCH --nodes=32", "#SBATCH --nodes=3"))
    env = {"SLURM_SUBMIT_DIR": str(REPO)}  # where a copy finds common.sh, as under sbatch
    world_size, argv = printed_args(broken, tmp_path, task=0, env=env)
    assert world_size == 24
    with pytest.raises(ArgumentError, match="--global-batch-size 512 is not a multiple of --micro-batch-size 1"):
        parse_args(argv, world_size=world_size)


def _args_8b(tmp_path, *extra):
    world_size, argv = printed_args(LAUNCH_DIR / "free_8b_200b.sh", tmp_path, task=1)
    return parse_args([*argv, *extra], world_size=world_size)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--tensor-model-parallel-size", "3"],
            r"--tensor-model-parallel-size 3 x --pipeline-model-parallel-size 1 x --context-parallel-size 1 = 3 "
            r"does not divide the world size 256",
        ),
        (["--num-query-groups", "6"], r"--num-query-groups 6 does not divide --num-attention-heads 32"),
    ],
)
def test_bad_sizes_name_the_flags(tmp_path, extra, message):
    """Sizes that do not divide are rejected by the argument validation, flags named."""
    with pytest.raises(ArgumentError, match=message):
        _args_8b(tmp_path, *extra)


def test_injection_layer_off_a_stage_boundary(tmp_path):
    """With PP the encoder's input X_{L/2} must cross a stage boundary: block 17 must start one."""
    args = _args_8b(tmp_path, "--pipeline-model-parallel-size", "2", "--decoder-first-pipeline-num-layers", "12")
    with pytest.raises(ArgumentError, match=r"--injection-layer 17 must be the first layer of a pipeline stage"):
        plan(args)
    args = _args_8b(tmp_path, "--pipeline-model-parallel-size", "2")
    assert pipeline_stages(args) == [(0, 16), (16, 32)]
    args = _args_8b(
        tmp_path, "--pipeline-model-parallel-size", "2", "--baseline", "--decoder-first-pipeline-num-layers", "12"
    )
    assert pipeline_stages(args) == [(0, 12), (12, 32)]  # no latent, any split


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--decoder-first-pipeline-num-layers", "12"], r"need --pipeline-model-parallel-size > 1"),
        (
            ["--pipeline-model-parallel-size", "4", "--decoder-first-pipeline-num-layers", "9"],
            r"the 23 layers left by --decoder-first-pipeline-num-layers 9 .* do not divide over the 3 other stages",
        ),
        (
            [
                "--pipeline-model-parallel-size",
                "2",
                "--decoder-first-pipeline-num-layers",
                "16",
                "--decoder-last-pipeline-num-layers",
                "15",
            ],
            r"must equal --num-layers 32",
        ),
    ],
)
def test_uneven_pipeline_flags(tmp_path, extra, message):
    """Bad --decoder-first/last-pipeline-num-layers give one line naming them (megatron asserts), when
    the flags are parsed: for a run as for --dry-run."""
    with pytest.raises(ArgumentError, match=message):
        plan(_args_8b(tmp_path, *extra))


def test_memory_over_the_gpu_names_the_flags(tmp_path):
    """A micro batch that does not fit 80 GB: the error says how much and which flags to change."""
    with pytest.raises(
        ArgumentError,
        match=r"estimated \d+\.\d GiB per GPU .* exceeds --gpu-memory-gb 80: "
        r"lower --micro-batch-size",
    ):
        plan(_args_8b(tmp_path, "--micro-batch-size", "2"))


def test_plan_numbers(tmp_path):
    """Sanity of the 8B plan: parameter parts, FLOPs/token about 6N plus attention, memory parts,
    and what pipeline parallelism and full recompute change."""
    result = plan(_args_8b(tmp_path))
    params = result["parameters"]
    assert params["total"] == pytest.approx(8.54e9, rel=0.01)
    assert params["post_sampler"] == 2**16 * 4096
    assert params["encoder"] == pytest.approx(params["decoder"] / 32, rel=0.01)
    dense = 6 * (params["total"] - params["embedding"] - params["post_sampler"])
    assert dense < result["flops_per_token"]["total"] < 1.4 * dense
    assert result["tokens"]["total"] >= 200e9
    peak = result["memory"]["peak"]
    assert peak["gradients"] == 2 * peak["weights"]  # fp32 grads, bf16 weights
    assert peak["optimizer"] == pytest.approx(6 * peak["weights"] / 128)  # 12 B over DP 128

    pp2 = plan(_args_8b(tmp_path, "--pipeline-model-parallel-size", "2"))
    first, second = pp2["memory"]["stages"]
    assert first["embedding"] and not first["latent"] and second["latent"] and second["output_layer"]
    assert (first["in_flight"], second["in_flight"]) == (2, 1)  # 1F1B warm-up on stage 1
    assert first["weights"] < peak["weights"] / 1.8

    recompute = plan(_args_8b(tmp_path, "--recompute-granularity", "full", "--recompute-method", "uniform"))
    assert recompute["memory"]["peak"]["activations"] < peak["activations"] / 3


def test_dry_run_prints_the_plan(tmp_path, capsys):
    """pretrain --dry-run prints the table and the one-line summary launch_scripts/common.sh reads."""
    from megatron_free.pretrain import main

    world_size, argv = printed_args(LAUNCH_DIR / "free_1p5b_47b.sh", tmp_path, task=2)
    assert main([*argv, "--dry-run", "--world-size", str(world_size)]) == 0
    out = capsys.readouterr().out
    for part in (
        "parameters",
        "post-sampler",
        "training FLOPs per token",
        "iterations",
        "memory per GPU",
        "activations",
        "optimizer",
        "at MFU",
    ):
        assert part in out
    assert re.search(r"^plan: ok train_iters=22412 world_size=32 peak_memory_gib=\d+", out, re.M)

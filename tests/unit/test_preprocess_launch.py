"""launch_scripts/preprocess_array.sh: slurm array tasks (simulated by their environment) write the
shards, a rerun skips complete ones, and the merge job gives a single run's bytes."""

import os
import subprocess
import sys
from pathlib import Path

from tests.unit.test_preprocess import SHAKESPEARE, run

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch_scripts" / "preprocess_array.sh"


def script(env, *args):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    clean["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), clean.get("PATH", "")])
    clean.update(env)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO, env=clean, capture_output=True, text=True, timeout=300
    )


def test_array_tasks_then_merge_equal_a_single_run(tmp_path):
    base = dict(
        INPUT=str(SHAKESPEARE),
        INPUT_FORMAT="text-lines",
        OUTPUT_PREFIX=str(tmp_path / "plays"),
        TOKENIZER_TYPE="ByteTokenizer",
        WORKERS="2",
        SLURM_ARRAY_TASK_COUNT="4",
    )
    for task in range(4):
        result = script(dict(base, SLURM_ARRAY_TASK_ID=str(task)))
        assert result.returncode == 0, result.stderr
    again = script(dict(base, SLURM_ARRAY_TASK_ID="2"))
    assert again.returncode == 0 and "already complete" in again.stdout
    incomplete = script(dict(base, MERGE="1", NUM_SHARDS="5"))
    assert incomplete.returncode == 2 and "no such file" in incomplete.stderr
    merged = script(dict(base, MERGE="1"))
    assert merged.returncode == 0, merged.stderr
    _, single = run(tmp_path, [SHAKESPEARE], name="single", input_format="text-lines", append_eod=True)
    prefix = str(tmp_path / "plays_text_document")
    assert (Path(prefix + ".bin").read_bytes(), Path(prefix + ".idx").read_bytes()) == single["text"]
    missing = script({k: v for k, v in base.items() if k != "INPUT"} | {"SLURM_ARRAY_TASK_ID": "0"})
    assert missing.returncode != 0 and "set INPUT" in missing.stderr

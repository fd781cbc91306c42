"""The repository is self-contained: no tracked file points outside it, and what the examples and
tests read ships inside it."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The development machines keep a folder beside the repository (../shared: data, docs) that users
# never have.
OUTSIDE = re.compile(r"\.\./shared\b|\bshared/(data|docs|hooks)\b|/work/")


def _tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in names.splitlines():
        path = REPO / name
        if path.suffix in {".png", ".bin", ".idx"} or not path.is_file():
            continue
        try:
            yield name, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def test_no_file_refers_to_a_path_outside_the_repository():
    offenders = []
    for name, text in _tracked_text_files():
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line) and name != "tests/unit/test_self_contained.py":
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_shipped_corpus_is_here():
    text = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    assert len(text) > 1_000_000 and text.startswith("First Citizen:")

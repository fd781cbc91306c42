"""Benchmark: preprocessing throughput, ours beside Megatron-LM's tools/preprocess_data.py, same input.

Run:  python benchmarks/preprocess.py [--workers 1 2] [--megatron-lm DIR] [--megatron-lm-pythonpath DIRS]
                                     [--site-packages] [--repeats 3] [--json out.json]
      python -m benchmarks --parts preprocess --megatron-lm DIR        (the same, in the unified command)

Corpus: the Python standard library's .py files (sysconfig's 'stdlib', site-packages excluded; with
--site-packages this interpreter's site-packages .py files too) as one JSONL file, one document per
file; the few files that are not UTF-8 are left out. Tokenizer: a 4,096-piece BPE sentencepiece
model trained first on every 8th file (tools/train_tokenizer.py's settings; its training time is
printed, not counted); `--tokenizer byte` measures our pipeline without a tokenizer's cost (no
Megatron-LM side then). Every run is a whole process, interpreter start and imports included, timed
from outside, with --append-eod and the same --workers on both sides:

  ours                megatron-free-preprocess (gigatoken with sentencepiece's ids, FastSentencePiece)
  ours, sentencepiece the same with --no-fast-tokenizer (sentencepiece's own encode)
  Megatron-LM         python DIR/tools/preprocess_data.py from the checkout DIR (e.g. `git archive
                      core_v0.16.1 | tar -x -C DIR`); skipped, saying so, without --megatron-lm. Its
                      imports need `six` and `triton` beyond megatron-core: --megatron-lm-pythonpath
                      adds folders (pip install --target DIR six triton) to its PYTHONPATH only.

The three outputs are compared byte for byte (.bin and .idx). Each repeat runs the three back to
back, so that a change in the machine's load hits all of them; the median of --repeats is reported.

`run(...)` returns one dict per worker count (the unified benchmark's "preprocess" rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

try:
    import megatron_free  # noqa: F401
except ImportError:  # running as `python benchmarks/preprocess.py` from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_free.data.train_tokenizer import TokenizerTrainingConfig, train_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def stdlib_files() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        str(p)
        for p in root.rglob("*.py")
        if "site-packages" not in p.parts and "dist-packages" not in p.parts and p.is_file()
    )


def site_packages_files() -> list[str]:
    return sorted(str(p) for p in Path(sysconfig.get_paths()["purelib"]).rglob("*.py") if p.is_file())


def write_corpus(files: list[str], path: str) -> dict:
    """One JSONL line {"text": file contents} per UTF-8 file."""
    documents = skipped = 0
    with open(path, "w", encoding="utf-8") as out:
        for name in files:
            try:
                text = Path(name).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                skipped += 1
                continue
            out.write(json.dumps({"text": text}) + "\n")
            documents += 1
    return {"documents": documents, "not_utf8": skipped, "mb": round(os.path.getsize(path) / 1e6, 1)}


def _digest(prefix: str) -> str:
    h = hashlib.sha256()
    for suffix in (".bin", ".idx"):
        with open(prefix + suffix, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def _timed(command: list[str], env=None, cwd=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children) of one whole process."""
    before = os.times()
    start = time.monotonic()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = os.times()
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({result.returncode}): {result.stderr[-2000:]}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def _count_tokens(prefix: str) -> tuple[int, int]:
    """(documents, tokens) from an .idx header and the .bin size."""
    from megatron_free.data.indexed import read_index_header

    dtype, _, documents, _ = read_index_header(prefix + ".idx")
    import numpy as np

    return documents - 1, os.path.getsize(prefix + ".bin") // np.dtype(dtype).itemsize


def run(
    workers=(1, 2),
    tokenizer: str = "sentencepiece",
    vocab_size: int = 4096,
    repeats: int = 1,
    megatron_lm: str | None = None,
    megatron_lm_pythonpath: str | None = None,
    site_packages: bool = False,
    log=sys.stderr,
) -> list[dict]:
    files = stdlib_files() + (site_packages_files() if site_packages else [])
    results = []
    if megatron_lm is None:
        megatron_skip = "no Megatron-LM checkout given (--megatron-lm DIR)"
    elif tokenizer != "sentencepiece":
        megatron_skip = f"--tokenizer {tokenizer}: Megatron-LM's side needs the sentencepiece model"
    elif not (Path(megatron_lm) / "tools" / "preprocess_data.py").is_file():
        megatron_skip = f"--megatron-lm {megatron_lm}: no tools/preprocess_data.py there"
    else:
        megatron_skip = None
    if megatron_skip and log is not None:
        log.write(f"Megatron-LM side skipped: {megatron_skip}\n")
    with tempfile.TemporaryDirectory() as tmp:
        corpus_path = os.path.join(tmp, "corpus.jsonl")
        corpus = write_corpus(files, corpus_path)
        common = ["--input", corpus_path, "--append-eod"]
        if tokenizer == "sentencepiece":
            start = time.monotonic()
            model = train_tokenizer(
                TokenizerTrainingConfig(
                    inputs=files[::8],
                    model_prefix=os.path.join(tmp, "stdlib"),
                    vocab_size=vocab_size,
                    input_format="text-files",
                    skip_bad_lines=True,
                ),
                log=None,
            )
            if log is not None:
                log.write(
                    f"trained a {vocab_size}-piece BPE model on {len(files[::8])} files "
                    f"in {time.monotonic() - start:.1f} s\n"
                )
            common += ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model]
        elif tokenizer == "byte":
            common += ["--tokenizer-type", "ByteTokenizer"]
        else:
            raise ValueError(f"--tokenizer {tokenizer}: expected sentencepiece or byte")
        ours_cli = [sys.executable, str(REPO / "tools" / "preprocess_data.py")]
        megatron_env = dict(os.environ)
        if megatron_lm_pythonpath:
            megatron_env["PYTHONPATH"] = os.pathsep.join(
                [megatron_lm_pythonpath] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
            )
        for n in workers:
            variants = {"ours": ours_cli + common + ["--workers", str(n), "--output-prefix", os.path.join(tmp, "ours")]}
            if tokenizer == "sentencepiece":
                variants["ours_sentencepiece"] = (
                    ours_cli
                    + common
                    + ["--workers", str(n), "--no-fast-tokenizer", "--output-prefix", os.path.join(tmp, "ours_sp")]
                )
            if megatron_skip is None:
                variants["megatron_lm"] = (
                    [sys.executable, str(Path(megatron_lm) / "tools" / "preprocess_data.py")]
                    + common
                    + ["--workers", str(n), "--output-prefix", os.path.join(tmp, "megatron")]
                )
            times = {name: [] for name in variants}
            for _ in range(repeats):
                for name, command in variants.items():
                    times[name].append(
                        _timed(
                            command,
                            env=megatron_env if name == "megatron_lm" else None,
                            cwd=megatron_lm if name == "megatron_lm" else None,
                        )
                    )
            prefixes = {"ours": "ours", "ours_sentencepiece": "ours_sp", "megatron_lm": "megatron"}
            digests = {name: _digest(os.path.join(tmp, prefixes[name] + "_text_document")) for name in variants}
            documents, tokens = _count_tokens(os.path.join(tmp, "ours_text_document"))
            row = dict(
                benchmark="preprocess",
                corpus="stdlib .py" + (" + site-packages" if site_packages else ""),
                corpus_mb=corpus["mb"],
                not_utf8=corpus["not_utf8"],
                tokenizer=tokenizer,
                vocab_size=vocab_size if tokenizer == "sentencepiece" else None,
                workers=n,
                cpus=os.cpu_count(),
                repeats=repeats,
                documents=documents,
                tokens=tokens,
            )
            for name in variants:
                wall, cpu = sorted(times[name])[len(times[name]) // 2]
                row[name] = {
                    "seconds": round(wall, 3),
                    "cpu_seconds": round(cpu, 2),
                    "seconds_all": [round(t, 3) for t, _ in times[name]],
                    "tokens_per_s": round(tokens / wall),
                    "mb_per_s": round(corpus["mb"] / wall, 2),
                    "identical_to_ours": digests[name] == digests["ours"],
                }
            # the unified benchmark's columns: ours
            row.update(
                seconds=row["ours"]["seconds"],
                cpu_seconds=row["ours"]["cpu_seconds"],
                tokens_per_s=row["ours"]["tokens_per_s"],
                mb_per_s=row["ours"]["mb_per_s"],
            )
            if "megatron_lm" in row:
                row["speedup_vs_megatron_lm"] = round(row["megatron_lm"]["seconds"] / row["ours"]["seconds"], 2)
            else:
                row["megatron_lm"] = {"skipped": megatron_skip}
            results.append(row)
            if log is not None:
                log.write(f"workers {n}: done\n")
    return results


def print_table(results: list[dict]) -> None:
    print(
        f"{'workers':>7} {'variant':<20} {'seconds':>8} {'cpu s':>7} {'tokens/s':>12} {'MB/s':>6} "
        f"{'same bytes':>10} {'ours x':>7}"
    )
    for r in results:
        for name in ("ours", "ours_sentencepiece", "megatron_lm"):
            v = r.get(name)
            if v is None:
                continue
            if "skipped" in v:
                print(f"{r['workers']:>7} {name:<20} skipped: {v['skipped']}")
                continue
            ratio = v["seconds"] / r["ours"]["seconds"]
            print(
                f"{r['workers']:>7} {name:<20} {v['seconds']:>8.2f} {v['cpu_seconds']:>7.2f} {v['tokens_per_s']:>12,} "
                f"{v['mb_per_s']:>6.2f} {str(v['identical_to_ours']):>10} {ratio:>7.2f}"
            )
    first = results[0]
    print(f"{first['documents']:,} documents, {first['tokens']:,} tokens; 'ours x' = that row's seconds / ours")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokenizer", choices=("sentencepiece", "byte"), default="sentencepiece")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3, help="runs per worker count and variant; the median is reported")
    p.add_argument("--megatron-lm", default=None, help="a Megatron-LM checkout: runs its tools/preprocess_data.py")
    p.add_argument(
        "--megatron-lm-pythonpath",
        default=None,
        help="folders added to PYTHONPATH for Megatron-LM's process only (its six, triton)",
    )
    p.add_argument("--site-packages", action="store_true", help="add this interpreter's site-packages .py files")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    results = run(
        args.workers,
        args.tokenizer,
        args.vocab_size,
        args.repeats,
        args.megatron_lm,
        args.megatron_lm_pythonpath,
        args.site_packages,
    )
    first = results[0]
    print(
        f"preprocessing {first['corpus']} as JSONL ({first['corpus_mb']} MB), tokenizer {first['tokenizer']}, "
        f"{first['cpus']} CPUs, whole processes, median of {first['repeats']} runs"
    )
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

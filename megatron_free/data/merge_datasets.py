"""Join Megatron indexed datasets (.bin/.idx pairs) into one, by streaming.

    megatron-free-merge-datasets --input 'data/web-*-of-00064_text_document' --output-prefix data/web_text_document
    megatron-free-merge-datasets --input data/shards/ --output-prefix data/web_text_document
    python tools/merge_datasets.py ...                  (same flags)

--input: dataset prefixes (without .bin/.idx), globs of them, or folders (every pair inside, sorted by
name, as Megatron-LM's tools/merge_datasets.py takes); joined in that order. The shards of
`megatron-free-preprocess --num-shards N` ({prefix}-{i:05d}-of-{N:05d}_{key}_document) sort into
shard order, and a set with a shard missing is refused; merged, they are byte for byte what one run
over the whole input writes. Memory stays flat whatever the number of shards (megatron_free/data/
indexed.py). The output is written next to itself under a temporary name and moved into place when
complete (.bin before .idx); an existing output is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys

from megatron_free.data.sources import InputError

SHARD_NAME = re.compile(r"-(\d{5,})-of-(\d{5,})_")


def resolve_datasets(patterns: list[str]) -> list[str]:
    """Dataset prefixes named by prefixes, globs (of prefixes or of .idx/.bin files) and folders."""
    prefixes = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted((p[:-4] for p in glob.glob(os.path.join(pattern, "*.idx"))), key=_name_order)
            if not found:
                raise InputError(f"--input {pattern}: no .idx file in the folder")
        elif any(c in pattern for c in "*?["):
            base = pattern[:-4] if pattern.endswith((".idx", ".bin")) else pattern
            found = sorted((p[:-4] for p in glob.glob(base + ".idx")), key=_name_order)
            if not found:
                raise InputError(f"--input {pattern}: no dataset (.idx) matches")
        else:
            found = [pattern[:-4] if pattern.endswith((".idx", ".bin")) else pattern]
        for prefix in found:
            for suffix in (".bin", ".idx"):
                if not os.path.isfile(prefix + suffix):
                    raise InputError(f"--input {pattern}: {prefix}{suffix}: no such file")
            if prefix not in prefixes:
                prefixes.append(prefix)
    _check_shard_set(prefixes)
    return prefixes


def _name_order(prefix: str):
    """Sorted by name, shard indices by number (shard 100000 after 99999)."""
    match = SHARD_NAME.search(prefix)
    if match is None:
        return prefix, "", -1
    return prefix[: match.start()], prefix[match.end() :], int(match.group(1))


def _check_shard_set(prefixes: list[str]) -> None:
    """Shards of megatron-free-preprocess --num-shards: all N of each set must be there."""
    sets: dict[tuple[str, str, int], set[int]] = {}
    for prefix in prefixes:
        match = SHARD_NAME.search(os.path.basename(prefix))
        if match:
            name = os.path.basename(prefix)
            key = (os.path.dirname(prefix), name[: match.start()] + "|" + name[match.end() :], int(match.group(2)))
            sets.setdefault(key, set()).add(int(match.group(1)))
    for (folder, name, total), present in sets.items():
        missing = sorted(set(range(total)) - present)
        if missing:
            head, tail = name.split("|")
            example = os.path.join(folder, f"{head}-{missing[0]:05d}-of-{total:05d}_{tail}")
            raise InputError(
                f"--input: {len(missing)} of {total} shards missing, e.g. {example}.{{bin,idx}} "
                f"(shard {missing[0]}: rerun megatron-free-preprocess --shard-index {missing[0]})"
            )


def merge_datasets(prefixes: list[str], output_prefix: str, overwrite: bool = False) -> dict:
    """Write output_prefix.bin/.idx, the datasets joined in order; returns their counts."""
    from megatron_free.data.indexed import IndexedDatasetWriter, InvalidIndexError, read_index_header

    if not prefixes:
        raise InputError("--input: give at least one dataset")
    if not overwrite and any(os.path.exists(output_prefix + s) for s in (".bin", ".idx")):
        raise InputError(f"--output-prefix {output_prefix}: {output_prefix}.bin/.idx exists (--overwrite replaces it)")
    if os.path.abspath(output_prefix) in {os.path.abspath(p) for p in prefixes}:
        raise InputError(f"--output-prefix {output_prefix}: is also an --input")
    try:
        dtype = read_index_header(prefixes[0] + ".idx")[0]
    except InvalidIndexError as e:
        raise InputError(str(e)) from None
    out_dir, out_name = os.path.split(os.path.abspath(output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f".{out_name}.tmp-{os.getpid()}")
    writer = IndexedDatasetWriter(tmp, dtype)
    try:
        for prefix in prefixes:
            try:
                writer.add_dataset(prefix)
            except InvalidIndexError as e:
                raise InputError(str(e)) from None
        writer.finalize()
        for suffix in (".bin", ".idx"):
            with open(tmp + suffix, "rb") as f:
                os.fsync(f.fileno())
        if os.path.exists(output_prefix + ".idx"):  # a stale index must never pair with the new .bin
            os.remove(output_prefix + ".idx")
        os.replace(tmp + ".bin", output_prefix + ".bin")
        os.replace(tmp + ".idx", output_prefix + ".idx")
    finally:
        writer.close()
        for suffix in (".bin", ".idx"):
            if os.path.exists(tmp + suffix):
                os.remove(tmp + suffix)
    return {
        "datasets": len(prefixes),
        "documents": writer.documents,
        "sequences": writer.sequences,
        "tokens": writer.tokens,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="megatron-free-merge-datasets",
        description="Join Megatron indexed datasets (.bin/.idx) into one, streaming.",
    )
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="dataset prefixes (no .bin/.idx), globs of them, or folders of pairs; joined in this "
        "order (globs and folders sorted by name)",
    )
    p.add_argument("--output-prefix", required=True, help="the merged dataset: writes PREFIX.bin and PREFIX.idx")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PREFIX.bin/.idx")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        counts = merge_datasets(resolve_datasets(args.input), args.output_prefix, args.overwrite)
    except InputError as e:
        print("error: " + str(e).replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output written", file=sys.stderr)
        return 130
    print(
        f"merged {counts['datasets']:,} datasets: {counts['documents']:,} documents, {counts['tokens']:,} tokens "
        f"-> {args.output_prefix}.{{bin,idx}}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

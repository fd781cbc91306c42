"""Preprocess corpora into Megatron indexed datasets: {output_prefix}_{key}_document.bin / .idx.

Run:
    megatron-free-preprocess --input 'corpus/*.jsonl.gz' --output-prefix data/corpus \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --append-eod --workers 8
    megatron-free-preprocess --input 'fineweb/*.parquet' --input-format parquet --output-prefix data/web \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --append-eod --workers 8 \
        --shard-index $SLURM_ARRAY_TASK_ID --num-shards 64      (then megatron-free-merge-datasets)
    python tools/preprocess_data.py ...            (same flags)
    python tools/preprocess_data.py --input data/tinyshakespeare.txt --input-format text-files \
        --output-prefix /tmp/shakespeare --tokenizer-type ByteTokenizer --append-eod

This module is the run and its command line; reading the input (formats, which records a shard
holds, what a bad record is) is sources.py, and encoding it (the tokenizer's fast path, workers,
partitions, the output's bytes) is encoding.py.

Shards: --shard-index i --num-shards N takes a contiguous part of the input by byte position (rows
in parquet/arrow files, whole gzip files; sources.py) and writes {prefix}-{i:05d}-of-{N:05d}_{key}
_document.bin/.idx; each shard is a Megatron dataset as it is (a --data-path blend takes them), and
megatron-free-merge-datasets joins them, streaming, into a single run's bytes. A shard's output is
committed atomically, so a crashed shard is rerun alone.

Bad input (malformed JSON, a missing key or column, a value that is not text, invalid UTF-8, text no
tokenizer can encode, an unreadable gzip stream or parquet file, an empty JSONL or text-lines file,
no token at all) stops the run with one line `path:line: what` (`path: row N: what` for parquet and
arrow) and no output; --skip-bad-lines skips such lines and counts them. Everything is written inside
a hidden temporary folder next to the output and moved into place only when complete, the .bin
before its .idx: an interrupted run never leaves a .bin/.idx pair that looks valid.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
import time

from megatron_free.data import sources
from megatron_free.data.encoding import MAX_WARNINGS, Counts, Encoder, commit_outputs, encode_partition, run_partitions
from megatron_free.data.indexed import IndexedDatasetWriter, optimal_dtype
from megatron_free.data.sources import INPUT_FORMATS, InputError  # noqa: F401 - part of this module's interface
from megatron_free.data.tokenizers import TOKENIZER_TYPES, build_tokenizer


@dataclasses.dataclass
class PreprocessConfig:
    inputs: list[str]
    output_prefix: str
    tokenizer_type: str
    tokenizer_model: str | None = None
    input_format: str = "jsonl"
    json_keys: tuple[str, ...] = ("text",)
    append_eod: bool = False
    workers: int = 1
    partitions: int = 1
    skip_bad_lines: bool = False
    log_interval_seconds: float = 10.0
    progress_bar: bool | None = None  # None: a progress line when the log stream is a terminal
    shard_index: int = 0
    num_shards: int = 1
    fast_tokenizer: bool = True  # sentencepiece BPE through FastSentencePiece (same ids)

    def __post_init__(self):
        inputs = [self.inputs] if isinstance(self.inputs, (str, os.PathLike)) else self.inputs
        self.inputs = [os.fspath(p) for p in inputs]
        self.output_prefix = os.fspath(self.output_prefix)
        self.json_keys = tuple(self.json_keys)
        if not self.inputs:
            raise InputError("--input: give at least one file or glob")
        if self.input_format not in INPUT_FORMATS:
            raise InputError(f"--input-format {self.input_format}: expected one of {', '.join(INPUT_FORMATS)}")
        if not self.json_keys or len(set(self.json_keys)) != len(self.json_keys):
            raise InputError(f"--json-keys {' '.join(self.json_keys)}: give distinct keys")
        if self.input_format in ("text-lines", "text-files") and len(self.json_keys) != 1:
            raise InputError(
                f"--json-keys {' '.join(self.json_keys)}: --input-format {self.input_format} has one text per "
                "document; give one key (it only names the output)"
            )
        if self.workers < 1:
            raise InputError(f"--workers {self.workers}: must be >= 1")
        if self.partitions < 1:
            raise InputError(f"--partitions {self.partitions}: must be >= 1")
        if self.num_shards < 1:
            raise InputError(f"--num-shards {self.num_shards}: must be >= 1")
        if not 0 <= self.shard_index < self.num_shards:
            raise InputError(f"--shard-index {self.shard_index}: must be in [0, --num-shards {self.num_shards})")
        if self.tokenizer_type not in TOKENIZER_TYPES:
            raise InputError(f"--tokenizer-type {self.tokenizer_type}: expected one of {', '.join(TOKENIZER_TYPES)}")


@dataclasses.dataclass
class PreprocessSummary(Counts):
    seconds: float = 0.0
    outputs: dict = dataclasses.field(default_factory=dict)  # json key -> output path prefix

    def line(self) -> str:
        s = max(self.seconds, 1e-9)
        return (
            f"{self.documents:,} documents ({self.empty_documents:,} empty), {self.tokens:,} tokens, "
            f"{self.skipped:,} skipped, {self.blank_lines:,} blank lines, {self.seconds:.2f} s "
            f"({self.documents / s:,.0f} docs/s, {self.tokens / s:,.0f} tokens/s, "
            f"{self.input_bytes / s / 1e6:.2f} MB/s)"
        )


# ----------------------------------------------------------------------------------------- progress, output


class _Progress:
    """A redrawn line on a terminal, plain log lines every interval otherwise."""

    def __init__(self, stream, bar: bool | None, interval_seconds: float, total_bytes: int | None):
        self.stream = stream
        self.bar = bool(stream is not None and (bar if bar is not None else stream.isatty()))
        self.interval = 0.1 if self.bar else interval_seconds
        self.total_bytes, self.counts, self.warnings = total_bytes, Counts(), 0
        self.start = self.last = time.monotonic()

    def progress(self, counts: Counts):
        self.counts.add(counts)
        now = time.monotonic()
        if self.stream is not None and now - self.last >= self.interval:
            self.last = now
            self._write(now)

    def _write(self, now):
        c, s = self.counts, max(now - self.start, 1e-9)
        text = (
            f"{c.documents:,} docs, {c.tokens:,} tokens | {c.documents / s:,.0f} docs/s, "
            f"{c.tokens / s:,.0f} tokens/s, {c.input_bytes / s / 1e6:.1f} MB/s"
        )
        if self.total_bytes:
            text += f" | {min(100.0, 100 * c.input_bytes / self.total_bytes):.0f}%"
        if c.skipped:
            text += f" | {c.skipped:,} skipped"
        if self.bar:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(f"[preprocess] {s:.0f} s: {text}\n")
        self.stream.flush()

    def warning(self, text: str):
        self.warnings += 1
        if self.stream is None or self.warnings > MAX_WARNINGS:
            return
        prefix = "\r\033[K" if self.bar else ""
        more = " (further bad lines are counted, not shown)" if self.warnings == MAX_WARNINGS else ""
        self.stream.write(f"{prefix}warning: {text}{more}\n")
        self.stream.flush()

    def finish(self):
        if self.bar:
            self.stream.write("\r\033[K")
            self.stream.flush()


def output_prefix_for(output_prefix: str, key: str) -> str:
    """Megatron-LM's naming: {prefix}_{key}_document (its .bin/.idx are this plus the suffix)."""
    return f"{output_prefix}_{key}_document"


def shard_output_prefix(output_prefix: str, shard_index: int, num_shards: int) -> str:
    """{prefix}-{i:05d}-of-{N:05d} for shard i of N > 1 (its pairs are {that}_{key}_document.bin/.idx)."""
    return output_prefix if num_shards == 1 else f"{output_prefix}-{shard_index:05d}-of-{num_shards:05d}"


def preprocess(config: PreprocessConfig, log=sys.stderr) -> PreprocessSummary:
    """Tokenize config.inputs (shard config.shard_index of config.num_shards) into one .bin/.idx pair
    per json key; log=None is silent. summary.seconds counts from after the tokenizer is loaded."""
    files = sources.resolve_inputs(config.inputs, config.input_format)
    try:
        tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_model)
    except (ValueError, OSError, ImportError) as e:
        raise InputError(str(e)) from None
    dtype = optimal_dtype(tokenizer.vocab_size)
    if config.append_eod and tokenizer.eod is None:
        raise InputError(f"--append-eod: tokenizer {tokenizer} has no end-of-document id")
    encoder = Encoder(
        tokenizer, config.input_format, config.json_keys, config.append_eod, dtype, fast=config.fast_tokenizer
    )
    if encoder.slow_reason is not None and log is not None:
        log.write(f"[preprocess] sentencepiece encodes every document (no fast path: {encoder.slow_reason})\n")
    start = time.monotonic()

    prefix = shard_output_prefix(config.output_prefix, config.shard_index, config.num_shards)
    final_prefixes = {key: output_prefix_for(prefix, key) for key in config.json_keys}
    ranges = sources.shard_ranges(sources.total_size(files), config.num_shards, config.shard_index, config.partitions)
    part_lists = sources.plan_parts(files, config.input_format, ranges, config.json_keys)
    out_dir, out_name = os.path.split(os.path.abspath(prefix))
    os.makedirs(out_dir, exist_ok=True)
    tmp_dir = os.path.join(out_dir, f".{out_name}.tmp-{os.getpid()}")
    os.makedirs(tmp_dir, exist_ok=True)
    compressed = config.input_format in sources.COLUMN_FORMATS or any(f.endswith(".gz") for f in files)
    total_bytes = None if compressed else min(ranges[-1][1], sources.total_size(files)) - ranges[0][0]
    progress = _Progress(log, config.progress_bar, config.log_interval_seconds, total_bytes)
    try:
        tmp_prefixes = {key: os.path.join(tmp_dir, key) for key in config.json_keys}
        counts = Counts()
        if config.partitions == 1:
            counts.add(
                encode_partition(
                    files, part_lists[0], encoder, tmp_prefixes, config.workers, progress, config.skip_bad_lines
                )
            )
        else:
            part_prefixes = [
                {key: os.path.join(tmp_dir, f"part{i}_{key}") for key in config.json_keys}
                for i in range(len(part_lists))
            ]
            counts.add(
                run_partitions(
                    files,
                    part_lists,
                    encoder,
                    part_prefixes,
                    max(1, config.workers // config.partitions),
                    config.skip_bad_lines,
                    progress,
                )
            )
            for key, tmp in tmp_prefixes.items():  # streamed, as a merge of shards
                writer = IndexedDatasetWriter(tmp, dtype)
                for parts in part_prefixes:
                    writer.add_dataset(parts[key])
                writer.finalize()
        for key, tmp in tmp_prefixes.items():  # megatron-core cannot open (mmap) an empty .bin
            if os.path.getsize(tmp + ".bin") == 0:
                skipped = f" ({counts.skipped:,} bad lines skipped)" if counts.skipped else ""
                if config.num_shards == 1:
                    raise InputError(f"{', '.join(config.inputs)}: empty input: no tokens under key {key!r}{skipped}")
                if log is not None:
                    log.write(
                        f"[preprocess] warning: shard {config.shard_index} of {config.num_shards} has no "
                        f"tokens under key {key!r}{skipped}: written for the merge, but leave it out of a "
                        "--data-path blend (megatron-core cannot open an empty .bin)\n"
                    )
        commit_outputs(tmp_prefixes, final_prefixes)
    finally:
        progress.finish()
        shutil.rmtree(tmp_dir, ignore_errors=True)
    summary = PreprocessSummary(**dataclasses.asdict(counts), seconds=time.monotonic() - start, outputs=final_prefixes)
    if log is not None:
        outputs = ", ".join(p + ".{bin,idx}" for p in final_prefixes.values())
        log.write(f"[preprocess] done: {summary.line()} -> {outputs}\n")
        log.flush()
    return summary


# ----------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="megatron-free-preprocess",
        description="Tokenize JSONL or text into Megatron indexed datasets ({prefix}_{key}_document.bin/.idx).",
    )
    g = p.add_argument_group("input")
    g.add_argument("--input", nargs="+", required=True, help="files or globs ('**' recursive); .gz is read as gzip")
    g.add_argument(
        "--input-format",
        choices=INPUT_FORMATS,
        default="jsonl",
        help="jsonl: one JSON object per line; text-lines: one document per line (blank lines "
        "skipped); text-files: one document per file; parquet: one document per row (the "
        "--json-keys columns); arrow: a HuggingFace datasets save_to_disk folder or its .arrow "
        "files (default: jsonl)",
    )
    g.add_argument(
        "--json-keys",
        nargs="+",
        default=["text"],
        help="JSON keys to tokenize, one output pair each (text formats: the output name) (default: text)",
    )
    g.add_argument(
        "--skip-bad-lines", action="store_true", help="skip and count malformed lines instead of stopping with an error"
    )
    g = p.add_argument_group("tokenizer")
    g.add_argument(
        "--tokenizer-type",
        required=True,
        choices=list(TOKENIZER_TYPES),
        help="tokenizer to encode with, as pretrain's --tokenizer-type",
    )
    g.add_argument(
        "--tokenizer-model", default=None, help="sentencepiece .model file, or a local HuggingFace tokenizer folder"
    )
    g.add_argument(
        "--append-eod", action="store_true", help="append the end-of-document id to every non-empty document"
    )
    g = p.add_argument_group("output and runtime")
    g.add_argument("--output-prefix", required=True, help="output path prefix, without _{key}_document.bin")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes in all (default: 1)")
    g.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="split this run's input into this many contiguous parts by byte position, encoded "
        "by separate processes (with --workers/--partitions workers each), then merged "
        "(default: 1)",
    )
    g.add_argument(
        "--log-interval-seconds",
        type=float,
        default=10.0,
        help="seconds between progress log lines when stderr is not a terminal (default: 10)",
    )
    g.add_argument(
        "--no-progress-bar",
        dest="progress_bar",
        action="store_false",
        default=None,
        help="plain log lines even on a terminal",
    )
    g.add_argument(
        "--shard-index",
        type=int,
        default=0,
        help="which shard of --num-shards to write (0-based; e.g. $SLURM_ARRAY_TASK_ID) (default: 0)",
    )
    g.add_argument(
        "--num-shards",
        type=int,
        default=1,
        help="split the input into this many contiguous shards by byte position (row ranges in "
        "parquet/arrow files, whole gzip files); shard i writes {prefix}-{i:05d}-of-{N:05d}_{key}"
        "_document.bin/.idx, which megatron-free-merge-datasets joins into a single run's bytes "
        "(default: 1)",
    )
    g.add_argument(
        "--no-fast-tokenizer",
        dest="fast_tokenizer",
        action="store_false",
        default=True,
        help="encode sentencepiece models with sentencepiece itself instead of gigatoken (the ids are "
        "the same either way)",
    )
    return p


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` runs and the temporary folder goes."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        config = PreprocessConfig(
            inputs=args.input,
            output_prefix=args.output_prefix,
            tokenizer_type=args.tokenizer_type,
            tokenizer_model=args.tokenizer_model,
            input_format=args.input_format,
            json_keys=args.json_keys,
            append_eod=args.append_eod,
            workers=args.workers,
            partitions=args.partitions,
            skip_bad_lines=args.skip_bad_lines,
            log_interval_seconds=args.log_interval_seconds,
            progress_bar=args.progress_bar,
            shard_index=args.shard_index,
            num_shards=args.num_shards,
            fast_tokenizer=args.fast_tokenizer,
        )
        preprocess(config)
    except InputError as e:
        print("error: " + str(e).replace("\n", " "), file=sys.stderr)
        return 2
    except _Terminated:
        print("error: terminated; no output written", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("error: interrupted; no output written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())

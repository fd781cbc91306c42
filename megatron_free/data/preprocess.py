"""Preprocess text corpora into Megatron indexed datasets: {output_prefix}_{key}_document.bin / .idx.

Run:
    megatron-free-preprocess --input 'corpus/*.jsonl.gz' --output-prefix data/corpus \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --append-eod --workers 8
    python tools/preprocess_data.py ...            (same flags)
    python tools/preprocess_data.py --input data/tinyshakespeare.txt --input-format text-files \
        --output-prefix /tmp/shakespeare --tokenizer-type ByteTokenizer --append-eod

Inputs: JSONL (one JSON object per line, text under each of --json-keys; a list of strings counts as
pre-split sentences, as in Megatron-LM), or plain text with one document per line (text-lines; blank
lines are not documents) or per file (text-files; an empty file is an empty document). Several files
or globs ('**' recursive), gzip (.gz).

Output: written with megatron-core's IndexedDatasetBuilder, token dtype DType.optimal_dtype(vocab_size)
and add_document(ids, sentence_lengths) per document, exactly as Megatron-LM's tools/preprocess_data.py
(without --split-sentences) does, so the bytes are identical for the same input and tokenizer.
As in Megatron-LM, a document whose text has no tokens is kept as a document of zero sequences and
gets no eod. Order is the input order for any --workers and --partitions (contiguous partitions, unlike
Megatron-LM's round-robin), so the output bytes do not depend on them.

Bad input (malformed JSON, a missing key, a value that is not text, invalid UTF-8, an unreadable gzip
stream, an empty JSONL or text-lines file, no token at all) stops the run with one line
`path:line: what` and no output; --skip-bad-lines skips such lines and counts them. Everything is
written inside a hidden temporary folder next to the output and moved into place only when complete,
the .bin before its .idx: an interrupted run never leaves a .bin/.idx pair that looks valid.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import gzip
import json
import math
import multiprocessing
import os
import queue as queue_module
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
import zlib

import numpy as np

from megatron_free.data.tokenizers import TOKENIZER_TYPES, Tokenizer, build_tokenizer

INPUT_FORMATS = ("jsonl", "text-lines", "text-files")
CHUNKSIZE = 32  # records per worker task, as Megatron-LM's pool.imap(..., 32)
MAX_WARNINGS = 10  # skipped lines printed before going quiet (all are counted)


class InputError(ValueError):
    """Bad input or configuration: reported as one line, without a traceback."""


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

    def __post_init__(self):
        self.inputs = [os.fspath(p) for p in ([self.inputs] if isinstance(self.inputs, (str, os.PathLike)) else self.inputs)]
        self.output_prefix = os.fspath(self.output_prefix)
        self.json_keys = tuple(self.json_keys)
        if not self.inputs:
            raise InputError("--input: give at least one file or glob")
        if self.input_format not in INPUT_FORMATS:
            raise InputError(f"--input-format {self.input_format}: expected one of {', '.join(INPUT_FORMATS)}")
        if not self.json_keys or len(set(self.json_keys)) != len(self.json_keys):
            raise InputError(f"--json-keys {' '.join(self.json_keys)}: give distinct keys")
        if self.input_format != "jsonl" and len(self.json_keys) != 1:
            raise InputError(
                f"--json-keys {' '.join(self.json_keys)}: --input-format {self.input_format} has one text per "
                "document; give one key (it only names the output)"
            )
        if self.workers < 1:
            raise InputError(f"--workers {self.workers}: must be >= 1")
        if self.partitions < 1:
            raise InputError(f"--partitions {self.partitions}: must be >= 1")
        if self.tokenizer_type not in TOKENIZER_TYPES:
            raise InputError(f"--tokenizer-type {self.tokenizer_type}: expected one of {', '.join(TOKENIZER_TYPES)}")


@dataclasses.dataclass
class Counts:
    documents: int = 0  # documents written (per input record, not per key)
    empty_documents: int = 0  # written with zero tokens (Megatron keeps them as zero-sequence documents)
    blank_lines: int = 0  # text-lines: blank lines, not documents
    tokens: int = 0  # over all keys, eod included
    skipped: int = 0  # bad lines / files skipped by --skip-bad-lines
    input_bytes: int = 0

    def add(self, other: "Counts") -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


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


# ----------------------------------------------------------------------------------------- inputs

def resolve_inputs(patterns: list[str]) -> list[str]:
    """Files named by paths and globs ('**' recursive), each glob sorted, duplicates dropped."""
    files, seen = [], set()
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise InputError(f"--input {pattern}: no file matches")
        elif os.path.isfile(pattern):
            matches = [pattern]
        else:
            raise InputError(f"--input {pattern}: no such file")
        for path in matches:
            if path not in seen:
                seen.add(path)
                files.append(path)
    return files


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


_READ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


def _read_records(files: list[str], input_format: str, slices=None):
    """Yield records (file_index, line, payload bytes | None, error | None), line counted from 1.

    slices: (file_index, first_line, stop_line) to read, stop_line None for the rest of the file;
    default: every file whole. A whole-file slice of a line format that holds no line yields an
    "empty input" error.
    Read errors (a corrupt gzip stream) yield an error record and end that file.
    """
    if slices is None:
        slices = [(i, 1, None) for i in range(len(files))]
    for file_index, first, stop in slices:
        line = 0
        try:
            with _open_binary(files[file_index]) as f:
                if input_format == "text-files":
                    payload, line = f.read(), 1  # an empty file is an empty document, not an error
                    yield file_index, 1, payload, None
                else:
                    for line, payload in enumerate(f, start=1):
                        if line < first:
                            continue
                        if stop is not None and line >= stop:
                            break
                        yield file_index, line, payload, None
        except _READ_ERRORS as e:
            yield file_index, line + 1, None, f"cannot read ({type(e).__name__}: {e})"
            continue
        if line == 0 and first == 1 and stop is None:
            yield file_index, 1, None, "empty input (no documents)"


def count_records(path: str, input_format: str) -> tuple[int, str | None]:
    """(records readable from the file, read error or None)."""
    n = 0
    try:
        with _open_binary(path) as f:
            if input_format == "text-files":
                return 1, None
            for n, _ in enumerate(f, start=1):
                pass
    except _READ_ERRORS as e:
        return n, f"{path}:{n + 1}: cannot read ({type(e).__name__}: {e})"
    return n, None


def iter_documents(inputs: list[str], input_format: str = "jsonl", json_key: str = "text", skip_bad_lines: bool = False):
    """Yield document texts (one process, input order); bad lines raise InputError or are skipped.

    For callers that want text rather than token ids (tokenizer training). Lists of sentences are joined by newlines.
    """
    files = resolve_inputs(inputs)
    for file_index, line, payload, error in _read_records(files, input_format):
        text = None
        if error is None:
            text, error, line = _parse_record(payload, input_format, (json_key,), line)
        if error is not None:
            if not skip_bad_lines:
                raise InputError(f"{files[file_index]}:{line}: {error}")
            continue
        if text is not None:
            yield "\n".join(text[0])


def _parse_record(payload: bytes, input_format: str, json_keys, line: int):
    """(per-key sentence lists | None for a blank text line, error | None, line of the error)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        line += payload.count(b"\n", 0, e.start)  # text-files: point at the line inside the file
        column = e.start - (payload.rfind(b"\n", 0, e.start) + 1) + 1
        return None, f"invalid UTF-8 (byte 0x{payload[e.start]:02x} at column {column})", line
    if input_format == "text-files":
        return [[text]], None, line
    if input_format == "text-lines":
        text = text[:-1] if text.endswith("\n") else text
        text = text[:-1] if text.endswith("\r") else text
        return (None if not text.strip() else [[text]]), None, line
    if not text.strip():
        return None, "blank line (JSONL needs one JSON object per line)", line
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"malformed JSON ({e.msg}: column {e.colno})", line
    if not isinstance(obj, dict):
        return None, f"not a JSON object (got {_json_type(obj)})", line
    per_key = []
    for key in json_keys:
        if key not in obj:
            return None, f"missing key {key!r}", line
        value = obj[key]
        if isinstance(value, str):
            per_key.append([value])
        elif isinstance(value, list) and all(isinstance(s, str) for s in value):
            per_key.append(value)  # pre-split sentences, as Megatron-LM accepts
        else:
            return None, f"key {key!r} is not a string (got {_json_type(value)})", line
    return per_key, None, line


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# ----------------------------------------------------------------------------------------- encoding

class _Encoder:
    """Record -> (file_index, line, nbytes, [(ids as bytes, sentence_lengths)] per key | None, error | None).

    The per-document algorithm of Megatron-LM's Encoder.encode: tokenize each sentence, keep the
    non-empty ones, and with append_eod add eod to the last sentence of a non-empty document.
    """

    def __init__(self, tokenizer: Tokenizer, input_format: str, json_keys, append_eod: bool, dtype):
        self.tokenizer, self.input_format, self.json_keys = tokenizer, input_format, tuple(json_keys)
        self.append_eod, self.dtype = append_eod, dtype

    def __call__(self, record):
        file_index, line, payload, error = record
        if error is not None:
            return file_index, line, 0, None, error
        per_key, error, line = _parse_record(payload, self.input_format, self.json_keys, line)
        if error is not None or per_key is None:
            return file_index, line, len(payload), None, error
        docs = []
        for sentences in per_key:
            doc_ids, lengths = [], []
            for sentence in sentences:
                try:
                    ids = self.tokenizer.tokenize(sentence)
                except ValueError as e:
                    return file_index, line, len(payload), None, f"cannot tokenize ({e})"
                if len(ids) > 0:
                    doc_ids.extend(ids)
                    lengths.append(len(ids))
            if len(doc_ids) > 0 and self.append_eod:
                doc_ids.append(self.tokenizer.eod)
                lengths[-1] += 1
            # raw bytes of the output dtype: ten times cheaper to send back from a worker than a list or an ndarray
            docs.append((np.asarray(doc_ids, dtype=self.dtype).tobytes(), lengths))
        return file_index, line, len(payload), docs, None


_WORKER_ENCODER: _Encoder | None = None


def _init_worker(encoder: _Encoder) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = encoder
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Pool.terminate() must kill workers outright
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it terminates the pool


def _encode_in_worker(record):
    return _WORKER_ENCODER(record)


def _mp_context():
    # fork: workers inherit the loaded tokenizer and skip re-importing torch/megatron (seconds each).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _throttled(records, window: threading.Semaphore, stop: threading.Event):
    """Pool.imap reads its input as fast as it can; hold it to a window of records in flight."""
    for record in records:
        while not window.acquire(timeout=0.1):
            if stop.is_set():
                return
        if stop.is_set():
            return
        yield record


class _Stopped(Exception):
    pass


def _encode_partition(files, slices, encoder: _Encoder, tmp_prefixes: dict, workers: int, sink, skip_bad_lines: bool,
                      should_stop=lambda: False) -> Counts:
    """Encode the records of `slices` into one .bin/.idx pair per key at tmp_prefixes[key]."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    counts = Counts()
    builders = {key: IndexedDatasetBuilder(prefix + ".bin", dtype=encoder.dtype) for key, prefix in tmp_prefixes.items()}
    records = _read_records(files, encoder.input_format, slices)
    pool = window = None
    stop = threading.Event()
    if workers > 1:
        pool = _mp_context().Pool(workers, initializer=_init_worker, initargs=(encoder,))
        window = threading.Semaphore(workers * CHUNKSIZE * 8)
        results = pool.imap(_encode_in_worker, _throttled(records, window, stop), CHUNKSIZE)
    else:
        results = map(encoder, records)
    try:
        pending, last_report = Counts(), time.monotonic()
        for file_index, line, nbytes, docs, error in results:
            if window is not None:
                window.release()
            if error is not None:
                where = f"{files[file_index]}:{line}: {error}"
                if not skip_bad_lines:
                    raise InputError(where)
                pending.skipped += 1
                sink.warning(f"{where} (skipped)")
            elif docs is None:
                pending.blank_lines += 1
            else:
                pending.documents += 1
                tokens = 0
                for key, (ids, lengths) in zip(tmp_prefixes, docs):
                    ids = np.frombuffer(ids, dtype=encoder.dtype)
                    builders[key].add_document(ids, lengths)
                    tokens += len(ids)
                pending.tokens += tokens
                pending.empty_documents += tokens == 0
            pending.input_bytes += nbytes
            now = time.monotonic()
            if now - last_report >= 0.05:  # report a few times a second, not per document
                counts.add(pending)
                sink.progress(pending)
                pending, last_report = Counts(), now
                if should_stop():
                    raise _Stopped()
        counts.add(pending)
        sink.progress(pending)
        for key, prefix in tmp_prefixes.items():
            builders[key].finalize(prefix + ".idx")
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        return counts
    finally:
        stop.set()
        if pool is not None:
            pool.terminate()
            pool.join()
        for builder in builders.values():
            builder.data_file.close()


# ----------------------------------------------------------------------------------------- partitions

def _partition_slices(record_counts: list[int], partitions: int):
    """Split the records, in order, into contiguous ranges of about equal size: a list of slice lists."""
    total = sum(record_counts)
    size = max(1, math.ceil(total / partitions))
    result = []
    for start in range(0, total, size):
        stop, slices, offset = min(start + size, total), [], 0
        for file_index, n in enumerate(record_counts):
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                slices.append((file_index, lo - offset + 1, hi - offset + 1))
            offset += n
        result.append(slices)
    return result


class _QueueSink:
    """Progress and warnings from a partition process to the parent, batched to a few messages a second."""

    def __init__(self, queue):
        self.queue, self.pending, self.last, self.warnings = queue, Counts(), 0.0, 0

    def progress(self, counts: Counts):
        self.pending.add(counts)
        if time.monotonic() - self.last > 0.2:
            self.flush()

    def flush(self):
        self.queue.put(("progress", self.pending))
        self.pending, self.last = Counts(), time.monotonic()

    def warning(self, text: str):
        self.warnings += 1
        if self.warnings <= MAX_WARNINGS:
            self.queue.put(("warning", text))


def _partition_main(index, files, slices, encoder, tmp_prefixes, workers, skip_bad_lines, queue, stop_event):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent stops partitions through stop_event
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sink = _QueueSink(queue)
    try:
        counts = _encode_partition(files, slices, encoder, tmp_prefixes, workers, sink, skip_bad_lines,
                                   should_stop=stop_event.is_set)
        sink.flush()
        queue.put(("done", index, counts))
    except _Stopped:
        queue.put(("stopped", index))
    except InputError as e:
        queue.put(("error", str(e)))
    except BaseException:  # noqa: BLE001 - forwarded to the parent, which raises it
        queue.put(("crash", f"partition {index}:\n{traceback.format_exc()}"))


def _run_partitions(files, slice_lists, encoder, part_prefixes, workers, skip_bad_lines, progress) -> Counts:
    ctx = _mp_context()
    queue, stop_event = ctx.Queue(), ctx.Event()
    processes = [
        ctx.Process(target=_partition_main, daemon=False,
                    args=(i, files, slices, encoder, part_prefixes[i], workers, skip_bad_lines, queue, stop_event))
        for i, slices in enumerate(slice_lists)
    ]
    for p in processes:
        p.start()
    counts, done, failure = Counts(), set(), None
    try:
        while len(done) < len(processes) and failure is None:
            try:
                message = queue.get(timeout=0.2)
            except queue_module.Empty:
                for i, p in enumerate(processes):
                    if i not in done and p.exitcode is not None and queue.empty():
                        failure = RuntimeError(f"partition {i} died with exit code {p.exitcode}")
                continue
            kind = message[0]
            if kind == "progress":
                progress.progress(message[1])
            elif kind == "warning":
                progress.warning(message[1])
            elif kind == "done":
                done.add(message[1])
                counts.add(message[2])
            elif kind == "error":
                failure = InputError(message[1])
            else:
                failure = RuntimeError(message[1])
        if failure is not None:
            raise failure
        return counts
    finally:
        stop_event.set()
        deadline = time.monotonic() + 30
        while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
            try:  # keep the queue drained so that no child blocks on a full pipe at exit
                while True:
                    queue.get_nowait()
            except queue_module.Empty:
                pass
            for p in processes:
                p.join(timeout=0.05)
        for p in processes:
            if p.is_alive():
                p.terminate()
            p.join()


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
        text = (f"{c.documents:,} docs, {c.tokens:,} tokens | {c.documents / s:,.0f} docs/s, "
                f"{c.tokens / s:,.0f} tokens/s, {c.input_bytes / s / 1e6:.1f} MB/s")
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
        more = f" (further bad lines are counted, not shown)" if self.warnings == MAX_WARNINGS else ""
        self.stream.write(f"{prefix}warning: {text}{more}\n")
        self.stream.flush()

    def finish(self):
        if self.bar:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def output_prefix_for(output_prefix: str, key: str) -> str:
    """Megatron-LM's naming: {prefix}_{key}_document (its .bin/.idx are this plus the suffix)."""
    return f"{output_prefix}_{key}_document"


def _commit(tmp_prefixes: dict, final_prefixes: dict) -> None:
    """Move finished pairs into place so that an .idx only ever appears next to its complete .bin."""
    for prefix in tmp_prefixes.values():
        _fsync(prefix + ".bin")
        _fsync(prefix + ".idx")
    for final in final_prefixes.values():  # a stale index must never pair with a new .bin
        if os.path.exists(final + ".idx"):
            os.remove(final + ".idx")
    for key, tmp in tmp_prefixes.items():
        os.replace(tmp + ".bin", final_prefixes[key] + ".bin")
    for key, tmp in tmp_prefixes.items():
        os.replace(tmp + ".idx", final_prefixes[key] + ".idx")


def preprocess(config: PreprocessConfig, log=sys.stderr) -> PreprocessSummary:
    """Tokenize config.inputs into one .bin/.idx pair per json key; log=None is silent.

    summary.seconds counts from after the tokenizer and megatron-core are loaded.
    """
    files = resolve_inputs(config.inputs)
    try:
        tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_model)
    except (ValueError, OSError, ImportError) as e:
        raise InputError(str(e)) from None
    with warnings.catch_warnings():  # megatron.core's import warns that Transformer Engine / Apex are absent
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    if config.append_eod and tokenizer.eod is None:
        raise InputError(f"--append-eod: tokenizer {tokenizer} has no end-of-document id")
    encoder = _Encoder(tokenizer, config.input_format, config.json_keys, config.append_eod, dtype)
    start = time.monotonic()

    final_prefixes = {key: output_prefix_for(config.output_prefix, key) for key in config.json_keys}
    out_dir, out_name = os.path.split(os.path.abspath(config.output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    tmp_dir = os.path.join(out_dir, f".{out_name}.tmp-{os.getpid()}")
    os.makedirs(tmp_dir, exist_ok=True)
    total_bytes = None if any(f.endswith(".gz") for f in files) else sum(os.path.getsize(f) for f in files)
    progress = _Progress(log, config.progress_bar, config.log_interval_seconds, total_bytes)
    try:
        tmp_prefixes = {key: os.path.join(tmp_dir, key) for key in config.json_keys}
        counts = Counts()
        if config.partitions == 1:
            counts.add(_encode_partition(files, None, encoder, tmp_prefixes, config.workers, progress,
                                         config.skip_bad_lines))
        else:
            record_counts = []
            for path in files:
                n, error = count_records(path, config.input_format)
                error = error or (None if n else f"{path}:1: empty input (no documents)")
                if error is not None:
                    if not config.skip_bad_lines:
                        raise InputError(error)
                    counts.skipped += 1
                    progress.warning(f"{error} (skipped)")
                record_counts.append(n)
            slice_lists = _partition_slices(record_counts, config.partitions)
            part_prefixes = [{key: os.path.join(tmp_dir, f"part{i}_{key}") for key in config.json_keys}
                             for i in range(len(slice_lists))]
            counts.add(_run_partitions(files, slice_lists, encoder, part_prefixes,
                                       max(1, config.workers // config.partitions), config.skip_bad_lines, progress))
            for key, prefix in tmp_prefixes.items():  # merge as Megatron-LM does
                builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
                for parts in part_prefixes:
                    builder.add_index(parts[key])
                builder.finalize(prefix + ".idx")
        for key, prefix in tmp_prefixes.items():  # megatron-core cannot open (mmap) an empty .bin
            if os.path.getsize(prefix + ".bin") == 0:
                skipped = f" ({counts.skipped:,} bad lines skipped)" if counts.skipped else ""
                raise InputError(f"{', '.join(config.inputs)}: empty input: no tokens under key {key!r}{skipped}")
        _commit(tmp_prefixes, final_prefixes)
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
    g.add_argument("--input-format", choices=INPUT_FORMATS, default="jsonl",
                   help="jsonl: one JSON object per line; text-lines: one document per line (blank lines "
                        "skipped); text-files: one document per file (default: jsonl)")
    g.add_argument("--json-keys", nargs="+", default=["text"],
                   help="JSON keys to tokenize, one output pair each (text formats: the output name) (default: text)")
    g.add_argument("--skip-bad-lines", action="store_true",
                   help="skip and count malformed lines instead of stopping with an error")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=list(TOKENIZER_TYPES))
    g.add_argument("--tokenizer-model", default=None,
                   help="sentencepiece .model file, or a local HuggingFace tokenizer folder")
    g.add_argument("--append-eod", action="store_true", help="append the end-of-document id to every non-empty document")
    g = p.add_argument_group("output and runtime")
    g.add_argument("--output-prefix", required=True, help="output path prefix, without _{key}_document.bin")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes in all (default: 1)")
    g.add_argument("--partitions", type=int, default=1,
                   help="split the input into this many contiguous parts encoded by separate processes "
                        "(with --workers/--partitions workers each), then merged; costs one more read of the "
                        "input to count its lines (default: 1)")
    g.add_argument("--log-interval-seconds", type=float, default=10.0,
                   help="seconds between progress log lines when stderr is not a terminal (default: 10)")
    g.add_argument("--no-progress-bar", dest="progress_bar", action="store_false", default=None,
                   help="plain log lines even on a terminal")
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
            inputs=args.input, output_prefix=args.output_prefix, tokenizer_type=args.tokenizer_type,
            tokenizer_model=args.tokenizer_model, input_format=args.input_format, json_keys=args.json_keys,
            append_eod=args.append_eod, workers=args.workers, partitions=args.partitions,
            skip_bad_lines=args.skip_bad_lines, log_interval_seconds=args.log_interval_seconds,
            progress_bar=args.progress_bar,
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

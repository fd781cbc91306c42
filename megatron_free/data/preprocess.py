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

Inputs: JSONL (one JSON object per line, text under each of --json-keys; a list of strings counts as
pre-split sentences, as in Megatron-LM), plain text with one document per line (text-lines; blank
lines are not documents) or per file (text-files; an empty file is an empty document), parquet (the
--json-keys columns, row group by row group) or arrow (a HuggingFace `datasets` save_to_disk folder
or its .arrow files). Several files or globs ('**' recursive), gzip (.gz). See sources.py.

Tokens: a sentencepiece BPE model is encoded with gigatoken through FastSentencePiece, which gives
exactly sentencepiece's ids (fast_tokenizer.py; where it cannot, sentencepiece encodes, and the log
says why in one line); --no-fast-tokenizer uses sentencepiece throughout. Workers encode batches of
about a megabyte of input each.

Output: the bytes of Megatron-LM's tools/preprocess_data.py (without --split-sentences): token
dtype optimal_dtype(vocab_size), one add_document(ids, sentence_lengths) per document, written by
indexed.py's streaming writer (megatron-core's IndexedDatasetBuilder's bytes, without importing
torch). As in Megatron-LM, a document whose text has no tokens is kept as a document of zero
sequences and gets no eod. Order is the input order for any --workers, --partitions and
--num-shards, so the bytes do not depend on them: N shards merged equal one run.

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
import json
import multiprocessing
import os
import queue as queue_module
import shutil
import signal
import sys
import threading
import time
import traceback

import numpy as np

from megatron_free.data import sources
from megatron_free.data.sources import INPUT_FORMATS, InputError  # noqa: F401 - part of this module's interface
from megatron_free.data.tokenizers import TOKENIZER_TYPES, SentencePieceTokenizer, Tokenizer, build_tokenizer

BATCH_BYTES = 1 << 20  # input bytes per worker task: a few dozen tasks in flight, not a record each
BATCH_RECORDS = 4096
MAX_WARNINGS = 10  # skipped lines printed before going quiet (all are counted)


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
        self.inputs = [os.fspath(p) for p in ([self.inputs] if isinstance(self.inputs, (str, os.PathLike)) else self.inputs)]
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

def resolve_inputs(patterns: list[str], input_format: str = "jsonl") -> list[str]:
    """Files named by paths and globs ('**' recursive), each glob sorted, duplicates dropped."""
    return sources.resolve_inputs(patterns, input_format)


def iter_documents(inputs: list[str], input_format: str = "jsonl", json_key: str = "text", skip_bad_lines: bool = False):
    """Yield document texts (one process, input order); bad lines raise InputError or are skipped.

    For callers that want text rather than token ids (tokenizer training). Lists of sentences are joined by newlines.
    """
    files = resolve_inputs(inputs, input_format)
    parts = sources.plan_parts(files, input_format, sources.shard_ranges(_total_size(files), 1), (json_key,))[0]
    for location, payload, _, error in sources.read_parts(files, parts, input_format, (json_key,)):
        text = None
        if error is None:
            text, error, location = _parse_record(payload, input_format, (json_key,), location)
        if error is not None:
            if not skip_bad_lines:
                raise InputError(f"{sources.describe(files, location)}: {error}")
            continue
        if text is not None:
            yield "\n".join(text[0])


def _total_size(files: list[str]) -> int:
    return sum(os.path.getsize(f) for f in files)


def _parse_record(payload, input_format: str, json_keys, location):
    """(per-key sentence lists | None for a blank text line, error | None, location of the error)."""
    if input_format in sources.COLUMN_FORMATS:
        per_key = []
        for key, value in zip(json_keys, payload):
            if isinstance(value, str):
                per_key.append([value])
            elif isinstance(value, list) and all(isinstance(s, str) for s in value):
                per_key.append(value)
            elif value is None:
                return None, f"column {key!r} is null", location
            else:
                return None, f"column {key!r} is not a string (got {_json_type(value)})", location
        return per_key, None, location
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        file_index, start, line = location  # text-files: point at the line inside the file
        location = (file_index, start, line + payload.count(b"\n", 0, e.start))
        column = e.start - (payload.rfind(b"\n", 0, e.start) + 1) + 1
        return None, f"invalid UTF-8 (byte 0x{payload[e.start]:02x} at column {column})", location
    if input_format == "text-files":
        return [[text]], None, location
    if input_format == "text-lines":
        text = text[:-1] if text.endswith("\n") else text
        text = text[:-1] if text.endswith("\r") else text
        return (None if not text.strip() else [[text]]), None, location
    if not text.strip():
        return None, "blank line (JSONL needs one JSON object per line)", location
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"malformed JSON ({e.msg}: column {e.colno})", location
    if not isinstance(obj, dict):
        return None, f"not a JSON object (got {_json_type(obj)})", location
    per_key = []
    for key in json_keys:
        if key not in obj:
            return None, f"missing key {key!r}", location
        value = obj[key]
        if isinstance(value, str):
            per_key.append([value])
        elif isinstance(value, list) and all(isinstance(s, str) for s in value):
            per_key.append(value)  # pre-split sentences, as Megatron-LM accepts
        else:
            return None, f"key {key!r} is not a string (got {_json_type(value)})", location
    return per_key, None, location


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _batches(records):
    """Records grouped into worker tasks of about BATCH_BYTES of input (at least one record each)."""
    batch, size = [], 0
    for record in records:
        batch.append(record)
        size += record[2]
        if size >= BATCH_BYTES or len(batch) >= BATCH_RECORDS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# ----------------------------------------------------------------------------------------- encoding

_TOKENIZE_ERRORS = (ValueError, RuntimeError, TypeError)  # sentencepiece: RuntimeError on a lone surrogate


@dataclasses.dataclass
class _BatchResult:
    counts: "Counts"
    errors: list  # (location, message), in input order
    outputs: list  # per key: (ids in the output dtype, sequence lengths, sequences per document)


class _Encoder:
    """A batch of records -> _BatchResult, the per-document algorithm of Megatron-LM's Encoder.encode:
    tokenize each sentence, keep the non-empty ones, and with append_eod add eod to the last sentence
    of a non-empty document. Done per batch with numpy; the ids come from FastSentencePiece (the same
    ids as sentencepiece) for a sentencepiece model unless fast is False.
    """

    def __init__(self, tokenizer: Tokenizer, input_format: str, json_keys, append_eod: bool, dtype, fast: bool = True):
        self.tokenizer, self.input_format, self.json_keys = tokenizer, input_format, tuple(json_keys)
        self.append_eod, self.dtype = append_eod, dtype
        self.fast = None
        if fast and isinstance(tokenizer, SentencePieceTokenizer):
            from megatron_free.data.fast_tokenizer import FastSentencePiece

            self.fast = FastSentencePiece(tokenizer)

    @property
    def slow_reason(self) -> str | None:
        """Why a sentencepiece model is encoded by sentencepiece throughout; None when the fast path is on,
        turned off (--no-fast-tokenizer) or not for this tokenizer (byte, character, HuggingFace)."""
        if self.fast is None:
            return None
        return self.fast.reason

    def _encode_texts(self, texts: list[str]):
        if self.fast is not None:
            return self.fast.encode_batch(texts)
        from megatron_free.data.fast_tokenizer import concatenate

        return concatenate([self.tokenizer.tokenize(t) for t in texts])

    def __call__(self, records) -> _BatchResult:
        counts, errors, docs = Counts(), [], []
        for location, payload, nbytes, error in records:
            counts.input_bytes += nbytes
            if error is None:
                per_key, error, location = _parse_record(payload, self.input_format, self.json_keys, location)
            if error is not None:
                errors.append((location, error))
            elif per_key is None:
                counts.blank_lines += 1
            else:
                docs.append((location, per_key))
        try:
            outputs = self._assemble([per_key for _, per_key in docs], counts)
        except _TOKENIZE_ERRORS:  # find the documents the tokenizer refuses; encode the others
            good = []
            for location, per_key in docs:
                try:
                    self._assemble([per_key], Counts())
                    good.append(per_key)
                except _TOKENIZE_ERRORS as e:
                    errors.append((location, f"cannot tokenize ({e})"))
            errors.sort(key=lambda item: (item[0][0], item[0][1] or 0, item[0][2]))
            outputs = self._assemble(good, counts)
        return _BatchResult(counts, errors, outputs)

    def _assemble(self, docs, counts: "Counts"):
        n = len(docs)
        tokens_per_doc = np.zeros(n, dtype=np.int64)
        outputs = []
        for k in range(len(self.json_keys)):
            sentences_per_doc = np.fromiter((len(doc[k]) for doc in docs), dtype=np.int64, count=n)
            ids, offsets = self._encode_texts([s for doc in docs for s in doc[k]])
            lengths = np.diff(offsets)
            nonempty = lengths > 0
            doc_of_sentence = np.repeat(np.arange(n), sentences_per_doc)
            sequence_lengths = lengths[nonempty]
            sequences_per_doc = np.bincount(doc_of_sentence[nonempty], minlength=n)
            doc_tokens = np.diff(offsets[np.concatenate(([0], np.cumsum(sentences_per_doc)))])
            if self.append_eod:
                with_tokens = sequences_per_doc > 0
                ends = offsets[np.cumsum(sentences_per_doc)][with_tokens]
                ids = np.insert(ids, ends, self.tokenizer.eod)
                sequence_lengths = sequence_lengths.copy()
                sequence_lengths[np.cumsum(sequences_per_doc)[with_tokens] - 1] += 1
                doc_tokens = doc_tokens + with_tokens
            tokens_per_doc += doc_tokens
            outputs.append((ids.astype(self.dtype), sequence_lengths.astype(np.int32), sequences_per_doc))
        counts.documents += n
        counts.tokens += int(tokens_per_doc.sum())
        counts.empty_documents += int((tokens_per_doc == 0).sum())
        return outputs


_WORKER_ENCODER: _Encoder | None = None


def _init_worker(encoder: _Encoder) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = encoder
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Pool.terminate() must kill workers outright
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it terminates the pool


def _encode_in_worker(batch):
    return _WORKER_ENCODER(batch)


def _mp_context():
    # fork: workers inherit the loaded tokenizer and skip re-importing torch/megatron (seconds each).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _throttled(batches, window: threading.Semaphore, stop: threading.Event):
    """Pool.imap reads its input as fast as it can; hold it to a window of batches in flight."""
    for batch in batches:
        while not window.acquire(timeout=0.1):
            if stop.is_set():
                return
        if stop.is_set():
            return
        yield batch


class _Stopped(Exception):
    pass


def _encode_partition(files, parts, encoder: _Encoder, tmp_prefixes: dict, workers: int, sink, skip_bad_lines: bool,
                      should_stop=lambda: False) -> Counts:
    """Encode the records of `parts` into one .bin/.idx pair per key at tmp_prefixes[key]."""
    from megatron_free.data.indexed import IndexedDatasetWriter

    counts = Counts()
    writers = {key: IndexedDatasetWriter(prefix, encoder.dtype) for key, prefix in tmp_prefixes.items()}
    batches = _batches(sources.read_parts(files, parts, encoder.input_format, encoder.json_keys))
    pool = window = None
    stop = threading.Event()
    if workers > 1:
        pool = _mp_context().Pool(workers, initializer=_init_worker, initargs=(encoder,))
        window = threading.Semaphore(workers * 4)
        results = pool.imap(_encode_in_worker, _throttled(batches, window, stop), 1)
    else:
        results = map(encoder, batches)
    try:
        for result in results:
            if window is not None:
                window.release()
            for location, error in result.errors:
                where = f"{sources.describe(files, location)}: {error}"
                if not skip_bad_lines:
                    raise InputError(where)
                result.counts.skipped += 1
                sink.warning(f"{where} (skipped)")
            for key, (ids, lengths, sequences_per_doc) in zip(tmp_prefixes, result.outputs):
                writers[key].add_documents(ids, lengths, sequences_per_doc)
            counts.add(result.counts)
            sink.progress(result.counts)
            if should_stop():
                raise _Stopped()
        for writer in writers.values():
            writer.finalize()
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
        for writer in writers.values():
            writer.close()


# ----------------------------------------------------------------------------------------- partitions

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


def _partition_main(index, files, parts, encoder, tmp_prefixes, workers, skip_bad_lines, queue, stop_event):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent stops partitions through stop_event
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sink = _QueueSink(queue)
    try:
        counts = _encode_partition(files, parts, encoder, tmp_prefixes, workers, sink, skip_bad_lines,
                                   should_stop=stop_event.is_set)
        sink.flush()
        queue.put(("done", index, counts))
    except _Stopped:
        queue.put(("stopped", index))
    except InputError as e:
        queue.put(("error", str(e)))
    except BaseException:  # noqa: BLE001 - forwarded to the parent, which raises it
        queue.put(("crash", f"partition {index}:\n{traceback.format_exc()}"))


def _run_partitions(files, part_lists, encoder, part_prefixes, workers, skip_bad_lines, progress) -> Counts:
    """Each part list in its own process (with `workers` tokenizer workers), into part_prefixes[i]."""
    ctx = _mp_context()
    queue, stop_event = ctx.Queue(), ctx.Event()
    processes = [
        ctx.Process(target=_partition_main, daemon=False,
                    args=(i, files, parts, encoder, part_prefixes[i], workers, skip_bad_lines, queue, stop_event))
        for i, parts in enumerate(part_lists)
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


def shard_output_prefix(output_prefix: str, shard_index: int, num_shards: int) -> str:
    """{prefix}-{i:05d}-of-{N:05d} for shard i of N > 1 (its pairs are {that}_{key}_document.bin/.idx)."""
    return output_prefix if num_shards == 1 else f"{output_prefix}-{shard_index:05d}-of-{num_shards:05d}"


def preprocess(config: PreprocessConfig, log=sys.stderr) -> PreprocessSummary:
    """Tokenize config.inputs (shard config.shard_index of config.num_shards) into one .bin/.idx pair
    per json key; log=None is silent. summary.seconds counts from after the tokenizer is loaded."""
    from megatron_free.data.indexed import IndexedDatasetWriter, optimal_dtype

    files = resolve_inputs(config.inputs, config.input_format)
    try:
        tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_model)
    except (ValueError, OSError, ImportError) as e:
        raise InputError(str(e)) from None
    dtype = optimal_dtype(tokenizer.vocab_size)
    if config.append_eod and tokenizer.eod is None:
        raise InputError(f"--append-eod: tokenizer {tokenizer} has no end-of-document id")
    encoder = _Encoder(tokenizer, config.input_format, config.json_keys, config.append_eod, dtype,
                       fast=config.fast_tokenizer)
    if encoder.slow_reason is not None and log is not None:
        log.write(f"[preprocess] sentencepiece encodes every document (no fast path: {encoder.slow_reason})\n")
    start = time.monotonic()

    prefix = shard_output_prefix(config.output_prefix, config.shard_index, config.num_shards)
    final_prefixes = {key: output_prefix_for(prefix, key) for key in config.json_keys}
    ranges = sources.shard_ranges(_total_size(files), config.num_shards, config.shard_index, config.partitions)
    part_lists = sources.plan_parts(files, config.input_format, ranges, config.json_keys)
    out_dir, out_name = os.path.split(os.path.abspath(prefix))
    os.makedirs(out_dir, exist_ok=True)
    tmp_dir = os.path.join(out_dir, f".{out_name}.tmp-{os.getpid()}")
    os.makedirs(tmp_dir, exist_ok=True)
    compressed = config.input_format in sources.COLUMN_FORMATS or any(f.endswith(".gz") for f in files)
    total_bytes = None if compressed else min(ranges[-1][1], _total_size(files)) - ranges[0][0]
    progress = _Progress(log, config.progress_bar, config.log_interval_seconds, total_bytes)
    try:
        tmp_prefixes = {key: os.path.join(tmp_dir, key) for key in config.json_keys}
        counts = Counts()
        if config.partitions == 1:
            counts.add(_encode_partition(files, part_lists[0], encoder, tmp_prefixes, config.workers, progress,
                                         config.skip_bad_lines))
        else:
            part_prefixes = [{key: os.path.join(tmp_dir, f"part{i}_{key}") for key in config.json_keys}
                             for i in range(len(part_lists))]
            counts.add(_run_partitions(files, part_lists, encoder, part_prefixes,
                                       max(1, config.workers // config.partitions), config.skip_bad_lines, progress))
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
                    log.write(f"[preprocess] warning: shard {config.shard_index} of {config.num_shards} has no "
                              f"tokens under key {key!r}{skipped}: written for the merge, but leave it out of a "
                              "--data-path blend (megatron-core cannot open an empty .bin)\n")
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
                        "skipped); text-files: one document per file; parquet: one document per row (the "
                        "--json-keys columns); arrow: a HuggingFace datasets save_to_disk folder or its .arrow "
                        "files (default: jsonl)")
    g.add_argument("--json-keys", nargs="+", default=["text"],
                   help="JSON keys to tokenize, one output pair each (text formats: the output name) (default: text)")
    g.add_argument("--skip-bad-lines", action="store_true",
                   help="skip and count malformed lines instead of stopping with an error")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=list(TOKENIZER_TYPES),
                   help="tokenizer to encode with, as pretrain's --tokenizer-type")
    g.add_argument("--tokenizer-model", default=None,
                   help="sentencepiece .model file, or a local HuggingFace tokenizer folder")
    g.add_argument("--append-eod", action="store_true", help="append the end-of-document id to every non-empty document")
    g = p.add_argument_group("output and runtime")
    g.add_argument("--output-prefix", required=True, help="output path prefix, without _{key}_document.bin")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes in all (default: 1)")
    g.add_argument("--partitions", type=int, default=1,
                   help="split this run's input into this many contiguous parts by byte position, encoded "
                        "by separate processes (with --workers/--partitions workers each), then merged "
                        "(default: 1)")
    g.add_argument("--log-interval-seconds", type=float, default=10.0,
                   help="seconds between progress log lines when stderr is not a terminal (default: 10)")
    g.add_argument("--no-progress-bar", dest="progress_bar", action="store_false", default=None,
                   help="plain log lines even on a terminal")
    g.add_argument("--shard-index", type=int, default=0,
                   help="which shard of --num-shards to write (0-based; e.g. $SLURM_ARRAY_TASK_ID) (default: 0)")
    g.add_argument("--num-shards", type=int, default=1,
                   help="split the input into this many contiguous shards by byte position (row ranges in "
                        "parquet/arrow files, whole gzip files); shard i writes {prefix}-{i:05d}-of-{N:05d}_{key}"
                        "_document.bin/.idx, which megatron-free-merge-datasets joins into a single run's bytes "
                        "(default: 1)")
    g.add_argument("--no-fast-tokenizer", dest="fast_tokenizer", action="store_false", default=True,
                   help="encode sentencepiece models with sentencepiece itself instead of gigatoken (the ids are "
                        "the same either way)")
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
            progress_bar=args.progress_bar, shard_index=args.shard_index, num_shards=args.num_shards,
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

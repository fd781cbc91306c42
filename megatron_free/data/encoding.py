"""Tokenizing preprocessing's records into Megatron indexed datasets: the encoder, its worker pool,
the partition processes, and the commit that moves finished outputs into place.

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

Partitions: encode_partition encodes a list of parts in this process, with a pool of tokenizer
workers; run_partitions gives each of several part lists a process of its own, which reports its
progress and bad lines to the parent through a queue. A partition writes a .bin/.idx pair per key
that the caller merges; commit_outputs moves finished pairs into place, each .bin before its .idx.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue as queue_module
import signal
import threading
import time
import traceback

import numpy as np

from megatron_free.data import sources
from megatron_free.data.fast_tokenizer import FastSentencePiece, concatenate
from megatron_free.data.indexed import IndexedDatasetWriter
from megatron_free.data.sources import InputError
from megatron_free.data.tokenizers import SentencePieceTokenizer, Tokenizer

BATCH_BYTES = 1 << 20  # input bytes per worker task: a few dozen tasks in flight, not a record each
BATCH_RECORDS = 4096
MAX_WARNINGS = 10  # skipped lines printed before going quiet (all are counted)


@dataclasses.dataclass
class Counts:
    """What a batch, a partition or a whole run read and wrote."""

    documents: int = 0  # documents written (per input record, not per key)
    empty_documents: int = 0  # written with zero tokens (Megatron keeps them as zero-sequence documents)
    blank_lines: int = 0  # text-lines: blank lines, not documents
    tokens: int = 0  # over all keys, eod included
    skipped: int = 0  # bad lines / files skipped by --skip-bad-lines
    input_bytes: int = 0

    def add(self, other: Counts) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


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
    counts: Counts
    errors: list  # (location, message), in input order
    outputs: list  # per key: (ids in the output dtype, sequence lengths, sequences per document)


class Encoder:
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
        return concatenate([self.tokenizer.tokenize(t) for t in texts])

    def __call__(self, records) -> _BatchResult:
        counts, errors, docs = Counts(), [], []
        for location, payload, nbytes, error in records:
            counts.input_bytes += nbytes
            if error is None:
                per_key, error, location = sources.parse_record(payload, self.input_format, self.json_keys, location)
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

    def _assemble(self, docs, counts: Counts):
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


_WORKER_ENCODER: Encoder | None = None


def _init_worker(encoder: Encoder) -> None:
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


def encode_partition(
    files,
    parts,
    encoder: Encoder,
    tmp_prefixes: dict,
    workers: int,
    sink,
    skip_bad_lines: bool,
    should_stop=lambda: False,
) -> Counts:
    """Encode the records of `parts` into one .bin/.idx pair per key at tmp_prefixes[key]."""
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
        counts = encode_partition(
            files, parts, encoder, tmp_prefixes, workers, sink, skip_bad_lines, should_stop=stop_event.is_set
        )
        sink.flush()
        queue.put(("done", index, counts))
    except _Stopped:
        queue.put(("stopped", index))
    except InputError as e:
        queue.put(("error", str(e)))
    except BaseException:  # noqa: BLE001 - forwarded to the parent, which raises it
        queue.put(("crash", f"partition {index}:\n{traceback.format_exc()}"))


def run_partitions(files, part_lists, encoder, part_prefixes, workers, skip_bad_lines, progress) -> Counts:
    """Each part list in its own process (with `workers` tokenizer workers), into part_prefixes[i]."""
    ctx = _mp_context()
    queue, stop_event = ctx.Queue(), ctx.Event()
    processes = [
        ctx.Process(
            target=_partition_main,
            daemon=False,
            args=(i, files, parts, encoder, part_prefixes[i], workers, skip_bad_lines, queue, stop_event),
        )
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


# ----------------------------------------------------------------------------------------- output


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def commit_outputs(tmp_prefixes: dict, final_prefixes: dict) -> None:
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

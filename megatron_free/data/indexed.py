"""Write and merge Megatron indexed datasets (.bin/.idx) by streaming, without torch.

The bytes are megatron-core's IndexedDatasetBuilder's (tests/unit/test_indexed.py compares them):

    .bin  the token ids of every sequence, back to back, in the dataset's dtype
    .idx  b"MMIDIDX\\0\\0", version <Q 1, dtype code <B, sequence count <Q, document count <Q (+1: the
          leading 0), int32 sequence lengths, int64 byte pointers of the sequences, int64 document
          indices (0, then the sequence count after each document)

megatron-core's builder keeps every length in a Python list and imports torch (3-4 s per process);
this writer spools the lengths and document ends to two side files next to the .bin and assembles
the .idx from them in chunks, so memory stays flat for any corpus size, and merging N datasets reads
each index once, chunk by chunk (Megatron-LM's tools/merge_datasets.py holds every shard's index in
lists: more than 200 GB of memory at 2,000 shards).
"""

from __future__ import annotations

import os
import shutil
import struct

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {
    np.uint8: 1,
    np.int8: 2,
    np.int16: 3,
    np.int32: 4,
    np.int64: 5,
    np.float64: 6,
    np.float32: 7,
    np.uint16: 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
CHUNK = 1 << 22  # index entries per read/write: 16-32 MiB


def optimal_dtype(vocab_size: int | None):
    """megatron-core's DType.optimal_dtype: uint16 below 65,500 ids, int32 otherwise."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


class InvalidIndexError(ValueError):
    """A file that is not a Megatron indexed dataset, named with the reason."""


def read_index_header(idx_path: str) -> tuple[type, int, int, int]:
    """(dtype, sequence count, document count, byte offset of the lengths) of an .idx file."""
    with open(idx_path, "rb") as f:
        head = f.read(len(INDEX_HEADER) + 8 + 1 + 16)
    if len(head) < len(INDEX_HEADER) + 25 or not head.startswith(INDEX_HEADER):
        raise InvalidIndexError(f"{idx_path}: not a Megatron indexed dataset index (no MMIDIDX header)")
    version, code, sequences, documents = struct.unpack_from("<QBQQ", head, len(INDEX_HEADER))
    if version != 1 or code not in CODE_DTYPES:
        raise InvalidIndexError(f"{idx_path}: unsupported index (version {version}, dtype code {code})")
    offset = len(INDEX_HEADER) + 25
    expected = offset + sequences * (4 + 8) + documents * 8
    if os.path.getsize(idx_path) < expected:
        raise InvalidIndexError(f"{idx_path}: truncated index ({os.path.getsize(idx_path)} bytes, expected {expected})")
    return CODE_DTYPES[code], sequences, documents, offset


class IndexedDatasetWriter:
    """Streams one dataset to {prefix}.bin and, on finalize(), {prefix}.idx.

    add_documents() takes a batch: the ids of its documents back to back, the length of every
    non-empty sequence, and how many sequences each document has (0 for an empty document, which
    Megatron keeps as a document of zero sequences).
    """

    def __init__(self, prefix: str, dtype):
        self.prefix, self.dtype = prefix, np.dtype(dtype).type
        self.itemsize = np.dtype(dtype).itemsize
        self.sequences = self.documents = self.tokens = 0
        self._bin = open(prefix + ".bin", "wb")
        self._lengths = open(prefix + ".lengths.tmp", "wb")  # int32 per sequence
        self._ends = open(prefix + ".ends.tmp", "wb")  # int64 per document: sequences so far

    def add_documents(self, ids: np.ndarray, sequence_lengths: np.ndarray, sequences_per_document: np.ndarray) -> None:
        self._bin.write(np.ascontiguousarray(ids, dtype=self.dtype).data)
        self._lengths.write(np.ascontiguousarray(sequence_lengths, dtype="<i4").data)
        ends = self.sequences + np.cumsum(sequences_per_document, dtype=np.int64)
        self._ends.write(ends.astype("<i8", copy=False).data)
        self.sequences += len(sequence_lengths)
        self.documents += len(sequences_per_document)
        self.tokens += len(ids)

    def add_dataset(self, prefix: str) -> None:
        """Append a whole dataset ({prefix}.bin/.idx), reading its index in chunks; as megatron-core's add_index."""
        dtype, sequences, documents, offset = read_index_header(prefix + ".idx")
        if dtype != self.dtype:
            raise InvalidIndexError(f"{prefix}.idx: dtype {np.dtype(dtype).name}, expected {np.dtype(self.dtype).name}")
        bin_size = os.path.getsize(prefix + ".bin")
        index = np.memmap(prefix + ".idx", mode="r", dtype=np.uint8)
        lengths = index[offset : offset + 4 * sequences].view("<i4")
        ends_at = offset + sequences * 12 + 8  # document indices, without their leading 0
        ends = index[ends_at : ends_at + 8 * (documents - 1)].view("<i8")
        tokens = 0
        for start in range(0, sequences, CHUNK):
            chunk = lengths[start : start + CHUNK]
            tokens += int(chunk.sum(dtype=np.int64))
            self._lengths.write(np.ascontiguousarray(chunk).data)
        if tokens * self.itemsize != bin_size:
            raise InvalidIndexError(f"{prefix}.bin: {bin_size} bytes, its index counts {tokens * self.itemsize}")
        for start in range(0, len(ends), CHUNK):
            self._ends.write((ends[start : start + CHUNK] + self.sequences).astype("<i8").data)
        del lengths, ends, index
        with open(prefix + ".bin", "rb") as f:
            shutil.copyfileobj(f, self._bin, 1 << 24)
        self.sequences += sequences
        self.documents += documents - 1
        self.tokens += tokens

    def finalize(self, idx_path: str | None = None) -> None:
        """Close the .bin and write the .idx (default {prefix}.idx); removes the side files."""
        idx_path = idx_path or self.prefix + ".idx"
        for f in (self._bin, self._lengths, self._ends):
            f.close()
        with open(idx_path, "wb") as out:
            out.write(
                INDEX_HEADER + struct.pack("<QBQQ", 1, DTYPE_CODES[self.dtype], self.sequences, self.documents + 1)
            )
            with open(self.prefix + ".lengths.tmp", "rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
            pointer = 0
            with open(self.prefix + ".lengths.tmp", "rb") as f:
                while chunk := f.read(4 * CHUNK):
                    lengths = np.frombuffer(chunk, dtype="<i4").astype(np.int64) * self.itemsize
                    pointers = np.cumsum(lengths) - lengths + pointer
                    pointer += int(lengths.sum())
                    out.write(pointers.astype("<i8").data)
            out.write(struct.pack("<q", 0))
            with open(self.prefix + ".ends.tmp", "rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
        self.discard_side_files()

    def close(self) -> None:
        """Close without an index (an aborted run): the caller removes the files."""
        for f in (self._bin, self._lengths, self._ends):
            f.close()
        self.discard_side_files()

    def discard_side_files(self) -> None:
        for suffix in (".lengths.tmp", ".ends.tmp"):
            if os.path.exists(self.prefix + suffix):
                os.remove(self.prefix + suffix)

"""megatron_free/data/indexed.py writes and merges the bytes of megatron-core's IndexedDatasetBuilder."""

import warnings

import numpy as np
import pytest

from megatron_free.data.indexed import IndexedDatasetWriter, InvalidIndexError, optimal_dtype, read_index_header

with warnings.catch_warnings():  # megatron.core warns that Transformer Engine / Apex are absent
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder


def random_documents(n, vocab, seed=0):
    """Documents as lists of sequences; some documents have no sequence (Megatron's empty documents)."""
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, vocab, rng.integers(1, 40)) for _ in range(rng.integers(0, 4))] for _ in range(n)]


def write_reference(prefix, docs, dtype):
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for sequences in docs:
        builder.add_document(np.concatenate(sequences) if sequences else [], [len(s) for s in sequences])
    builder.finalize(prefix + ".idx")


def write_ours(prefix, docs, dtype, batch=37):
    writer = IndexedDatasetWriter(prefix, dtype)
    for start in range(0, len(docs), batch):
        chunk = docs[start : start + batch]
        ids = np.concatenate([s for sequences in chunk for s in sequences] or [np.zeros(0, np.int64)])
        writer.add_documents(
            ids,
            np.array([len(s) for sequences in chunk for s in sequences], dtype=np.int32),
            np.array([len(sequences) for sequences in chunk]),
        )
    writer.finalize()
    return writer


def read(prefix):
    return open(prefix + ".bin", "rb").read(), open(prefix + ".idx", "rb").read()


@pytest.mark.parametrize("vocab", [1000, 100_000])
def test_writer_bytes_equal_megatron_builder(tmp_path, vocab):
    """uint16 and int32 token files, empty documents included; megatron-core reads the result back."""
    dtype = optimal_dtype(vocab)
    assert dtype == DType.optimal_dtype(vocab)
    docs = random_documents(500, vocab)
    write_reference(str(tmp_path / "ref"), docs, dtype)
    writer = write_ours(str(tmp_path / "ours"), docs, dtype)
    assert read(str(tmp_path / "ours")) == read(str(tmp_path / "ref"))
    assert writer.documents == len(docs) and sorted(p.name for p in tmp_path.iterdir()) == [
        "ours.bin",
        "ours.idx",
        "ref.bin",
        "ref.idx",
    ]  # no side file left
    dataset = IndexedDataset(str(tmp_path / "ours"))
    sequences = [s for d in docs for s in d]
    assert len(dataset) == len(sequences) and all(np.array_equal(dataset[i], s) for i, s in enumerate(sequences))


def test_merge_equals_megatron_add_index_and_a_single_write(tmp_path):
    """Merging pieces (one of them without a single sequence) gives the builder's add_index bytes and the
    bytes of writing everything at once, with index chunks smaller than the datasets."""
    import megatron_free.data.indexed as indexed

    docs = random_documents(700, 30_000, seed=1)
    pieces = [docs[:250], docs[250:251], [[]], docs[251:]]
    for i, piece in enumerate(pieces):
        write_ours(str(tmp_path / f"piece{i}"), piece, np.uint16)
    write_ours(str(tmp_path / "whole"), [d for p in pieces for d in p], np.uint16)
    builder = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.uint16)
    for i in range(len(pieces)):
        builder.add_index(str(tmp_path / f"piece{i}"))
    builder.finalize(str(tmp_path / "ref.idx"))
    chunk = indexed.CHUNK
    indexed.CHUNK = 64
    try:
        merged = IndexedDatasetWriter(str(tmp_path / "merged"), np.uint16)
        for i in range(len(pieces)):
            merged.add_dataset(str(tmp_path / f"piece{i}"))
        merged.finalize()
    finally:
        indexed.CHUNK = chunk
    assert read(str(tmp_path / "merged")) == read(str(tmp_path / "ref")) == read(str(tmp_path / "whole"))


def test_bad_indexes_are_named(tmp_path):
    write_ours(str(tmp_path / "a"), random_documents(20, 1000), np.uint16)
    (tmp_path / "junk.idx").write_bytes(b"not an index at all, really not")
    with pytest.raises(InvalidIndexError, match="junk.idx: not a Megatron indexed dataset"):
        read_index_header(str(tmp_path / "junk.idx"))
    data = (tmp_path / "a.idx").read_bytes()
    (tmp_path / "cut.idx").write_bytes(data[:-5])
    with pytest.raises(InvalidIndexError, match="cut.idx: truncated index"):
        read_index_header(str(tmp_path / "cut.idx"))
    (tmp_path / "short.idx").write_bytes(data)
    (tmp_path / "short.bin").write_bytes((tmp_path / "a.bin").read_bytes()[:-2])
    writer = IndexedDatasetWriter(str(tmp_path / "out"), np.uint16)
    with pytest.raises(InvalidIndexError, match="short.bin: .* bytes, its index counts"):
        writer.add_dataset(str(tmp_path / "short"))
    wide = IndexedDatasetWriter(str(tmp_path / "wide"), np.int32)
    with pytest.raises(InvalidIndexError, match="dtype uint16, expected int32"):
        wide.add_dataset(str(tmp_path / "a"))
    writer.close()
    wide.close()

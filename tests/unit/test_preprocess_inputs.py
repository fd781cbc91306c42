"""Parquet and arrow (HuggingFace datasets save_to_disk) inputs, --shard-index/--num-shards, and
megatron-free-merge-datasets: N shards merged are byte for byte one run over the whole input."""

import json
import os
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatron_free.data import merge_datasets
from megatron_free.data.preprocess import InputError, PreprocessConfig, main, preprocess
from megatron_free.data.sources import Part, plan_parts, shard_ranges

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

from tests.unit.test_preprocess import DOCS, SHAKESPEARE, many_docs, run, write_jsonl


def shakespeare_docs():
    return [{"text": p, "title": p.split("\n", 1)[0]} for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n")]


def write_parquet(path, docs, row_group_size=100):
    pq.write_table(pa.Table.from_pylist(docs), path, row_group_size=row_group_size)
    return path


def write_saved_dataset(folder, docs, files=3, rows_per_batch=50):
    """A folder laid out as `datasets`' save_to_disk writes it: Arrow IPC stream files + state.json."""
    folder.mkdir()
    table = pa.Table.from_pylist(docs)
    names = []
    step = -(-len(docs) // files)
    for i in range(files):
        name = f"data-{i:05d}-of-{files:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.slice(i * step, step).to_batches(max_chunksize=rows_per_batch):
                writer.write_batch(batch)
        names.append(name)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in reversed(names)]}))
    (folder / "dataset_info.json").write_text("{}")
    return folder, list(reversed(names))


def sharded_then_merged(tmp_path, inputs, num_shards, name, **kwargs):
    """Run every shard, check each opens as a Megatron dataset, merge them; {key: (bin, idx)} of the merge."""
    keys = kwargs.get("json_keys", ("text",))
    for i in range(num_shards):
        config = PreprocessConfig(
            inputs=[str(p) for p in inputs],
            output_prefix=str(tmp_path / name),
            shard_index=i,
            num_shards=num_shards,
            tokenizer_type="ByteTokenizer",
            **kwargs,
        )
        summary = preprocess(config, log=None)
        for prefix in summary.outputs.values():
            assert prefix.endswith(f"-{i:05d}-of-{num_shards:05d}_{keys[0]}_document") or len(keys) > 1
            if os.path.getsize(prefix + ".bin"):
                IndexedDataset(prefix)  # usable as it is in a --data-path blend
    merged = {}
    for key in keys:
        out = str(tmp_path / f"{name}_merged_{key}")
        assert (
            merge_datasets.main(["--input", str(tmp_path / f"{name}-*-of-*_{key}_document"), "--output-prefix", out])
            == 0
        )
        merged[key] = (Path(out + ".bin").read_bytes(), Path(out + ".idx").read_bytes())
    return merged


def test_four_shards_merged_equal_a_single_run(tmp_path):
    """JSONL over three files (one gzip), shards cutting files mid-way: 4 shards merged == one run, for 2 keys."""
    docs = shakespeare_docs()
    write_jsonl(tmp_path / "a.jsonl", docs[:2000])
    write_jsonl(tmp_path / "b.jsonl.gz", docs[2000:2500])
    write_jsonl(tmp_path / "c.jsonl", docs[2500:])
    inputs = [tmp_path / "*.jsonl*"]
    _, single = run(tmp_path, inputs, name="single", json_keys=("text", "title"), append_eod=True)
    for num_shards in (4, 7):
        merged = sharded_then_merged(
            tmp_path, inputs, num_shards, f"s{num_shards}", json_keys=("text", "title"), append_eod=True
        )
        assert merged == single


def test_text_lines_shards_and_partitions(tmp_path):
    """text-lines on Shakespeare: 4 shards (blank lines at the cuts) and --partitions inside a shard."""
    _, single = run(tmp_path, [SHAKESPEARE], name="single", input_format="text-lines", append_eod=True)
    assert (
        sharded_then_merged(
            tmp_path, [SHAKESPEARE], 4, "lines", input_format="text-lines", append_eod=True, partitions=3, workers=2
        )
        == single
    )


def test_shard_plan_is_a_partition_of_the_records(tmp_path):
    """Every line in exactly one shard, in order, whatever the number of shards, including more shards than lines."""
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": "x" * (i % 17)}) + "\n" for i in range(50)]
    src.write_text("".join(lines))
    from megatron_free.data.sources import read_parts

    for num_shards in (1, 2, 3, 50, 200):
        seen = []
        for i in range(num_shards):
            parts = plan_parts([str(src)], "jsonl", shard_ranges(src.stat().st_size, num_shards, i))[0]
            seen += [payload.decode() for _, payload, _, _ in read_parts([str(src)], parts, "jsonl", ("text",))]
        assert seen == lines, num_shards


def test_parquet_input_streams_row_groups(tmp_path, monkeypatch):
    """Parquet: the bytes of the same documents as JSONL; only the shard's row groups are read, in batches."""
    docs = shakespeare_docs()
    parquet = write_parquet(tmp_path / "plays.parquet", docs, row_group_size=500)
    _, from_jsonl = run(
        tmp_path,
        [write_jsonl(tmp_path / "plays.jsonl", docs)],
        name="jsonl",
        json_keys=("text", "title"),
        append_eod=True,
    )
    _, from_parquet = run(
        tmp_path, [parquet], name="pq", input_format="parquet", json_keys=("text", "title"), append_eod=True, workers=2
    )
    assert from_parquet == from_jsonl
    read_groups = []
    real_iter_batches = pq.ParquetFile.iter_batches

    def iter_batches(self, *args, **kwargs):
        read_groups.extend(kwargs["row_groups"])
        return real_iter_batches(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
    merged = sharded_then_merged(
        tmp_path, [parquet], 4, "pqs", input_format="parquet", json_keys=("text", "title"), append_eod=True
    )
    assert merged == from_jsonl
    groups = pq.ParquetFile(parquet).metadata.num_row_groups
    assert groups > 4 and len(read_groups) <= groups + 3  # each group once, plus those cut by a shard boundary


def test_arrow_saved_dataset_folder(tmp_path):
    """A save_to_disk folder: its files in state.json's order, the bytes of the same documents as JSONL; 4 shards."""
    docs = shakespeare_docs()
    folder, names = write_saved_dataset(tmp_path / "saved", docs)
    ordered = []
    for name in names:  # state.json lists the files in reverse name order here: that order is the dataset's
        ordered += pa.ipc.open_stream(pa.memory_map(str(folder / name))).read_all().to_pylist()
    _, from_jsonl = run(tmp_path, [write_jsonl(tmp_path / "saved.jsonl", ordered)], name="jsonl", append_eod=True)
    _, from_arrow = run(tmp_path, [folder], name="arrow", input_format="arrow", append_eod=True)
    assert from_arrow == from_jsonl
    assert sharded_then_merged(tmp_path, [folder], 4, "arrows", input_format="arrow", append_eod=True) == from_jsonl


def test_real_datasets_save_to_disk(tmp_path):
    """With the `datasets` package installed: its own save_to_disk output reads as its rows."""
    datasets = pytest.importorskip("datasets")
    docs = shakespeare_docs()[:500]
    datasets.Dataset.from_list(docs).save_to_disk(str(tmp_path / "saved"), num_shards=2)
    _, from_jsonl = run(tmp_path, [write_jsonl(tmp_path / "docs.jsonl", docs)], name="jsonl")
    _, from_arrow = run(tmp_path, [tmp_path / "saved"], name="arrow", input_format="arrow")
    assert from_arrow == from_jsonl


def test_columnar_bad_rows_name_file_and_row(tmp_path, capsys):
    """A null or non-string value, a missing column: one line naming the file (and the row); nothing written."""
    rows = [{"text": "good", "n": 1}] * 10
    bad = write_parquet(tmp_path / "bad.parquet", rows[:7] + [{"text": None, "n": 1}] + rows[:2], row_group_size=4)
    assert (
        main(
            [
                "--input",
                str(bad),
                "--input-format",
                "parquet",
                "--output-prefix",
                str(tmp_path / "o"),
                "--tokenizer-type",
                "ByteTokenizer",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err == f"error: {bad}: row 7: column 'text' is null\n"
    with pytest.raises(InputError, match=r"bad.parquet: no column 'body' \(--json-keys; columns: text, n\)"):
        run(tmp_path, [bad], input_format="parquet", json_keys=("body",))
    with pytest.raises(InputError, match=r"bad.parquet: row 0: column 'n' is not a string \(got a number\)"):
        run(tmp_path, [bad], input_format="parquet", json_keys=("n",))
    summary, _ = run(tmp_path, [bad], name="skipped", input_format="parquet", skip_bad_lines=True)
    assert (summary.documents, summary.skipped) == (9, 1)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="junk.parquet: not a readable parquet file"):
        run(tmp_path, [tmp_path / "junk.parquet"], input_format="parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.parquet",
        "junk.parquet",
        "skipped_text_document.bin",
        "skipped_text_document.idx",
    ]


def test_bad_line_in_a_later_shard_names_its_line_in_the_file(tmp_path, capsys):
    """A shard starting mid-file still reports path:line counted from the top of the file."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "good"}\n' * 900 + b'{"oops": 1}\n' + b'{"text": "good"}\n' * 99)
    codes = [
        main(
            [
                "--input",
                str(src),
                "--output-prefix",
                str(tmp_path / "o"),
                "--tokenizer-type",
                "ByteTokenizer",
                "--shard-index",
                str(i),
                "--num-shards",
                "4",
            ]
        )
        for i in range(4)
    ]
    assert codes == [0, 0, 0, 2]
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {src}:901: missing key 'text'"
    assert sorted(p.name for p in tmp_path.glob("o-*")) == [
        f"o-{i:05d}-of-00004_text_document.{s}" for i in range(3) for s in ("bin", "idx")
    ]


def test_rerunning_one_shard_rewrites_only_that_shard(tmp_path, monkeypatch):
    """A shard that crashed mid-write leaves nothing of itself (older outputs intact); rerunning it touches no other."""
    src = write_jsonl(tmp_path / "in.jsonl", many_docs(2000))
    argv = [
        "--input",
        str(src),
        "--output-prefix",
        str(tmp_path / "o"),
        "--tokenizer-type",
        "ByteTokenizer",
        "--num-shards",
        "4",
        "--shard-index",
    ]
    for i in (0, 1, 3):
        assert main(argv + [str(i)]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("o-*")}
    from megatron_free.data.indexed import IndexedDatasetWriter

    real_finalize = IndexedDatasetWriter.finalize

    def crash(self, *args):
        raise KeyboardInterrupt  # the shard's job killed while it writes

    monkeypatch.setattr(IndexedDatasetWriter, "finalize", crash)
    assert main(argv + ["2"]) == 130
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("o-*")} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(InputError, match=r"1 of 4 shards missing, e\.g\. .*o-00002-of-00004_text_document"):
        merge_datasets.merge_datasets(
            merge_datasets.resolve_datasets([str(tmp_path / "o-*_text_document")]), str(tmp_path / "m")
        )
    monkeypatch.setattr(IndexedDatasetWriter, "finalize", real_finalize)
    time.sleep(0.01)
    assert main(argv + ["2"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("o-*")}
    assert {n: t for n, t in after.items() if "00002" not in n} == before
    _, single = run(tmp_path, [src], name="single")
    assert (
        merge_datasets.main(
            ["--input", str(tmp_path / "o-*_text_document"), "--output-prefix", str(tmp_path / "merged")]
        )
        == 0
    )
    assert (
        Path(str(tmp_path / "merged") + ".bin").read_bytes(),
        Path(str(tmp_path / "merged") + ".idx").read_bytes(),
    ) == single["text"]


def test_merge_command_errors_and_order(tmp_path, capsys):
    """Folders and globs in shard order (by number), explicit prefixes in the given order; refusals are one line."""
    for i, part in enumerate((DOCS, many_docs(5), DOCS)):
        run(tmp_path, [write_jsonl(tmp_path / f"p{i}.jsonl", part)], name=f"d{i}")
    prefixes = merge_datasets.resolve_datasets([str(tmp_path / "d2_text_document"), str(tmp_path / "d0_text_document")])
    assert [Path(p).name for p in prefixes] == ["d2_text_document", "d0_text_document"]
    assert merge_datasets._name_order("x-100000-of-200000_t") > merge_datasets._name_order("x-99999-of-200000_t")
    out = str(tmp_path / "m")
    assert merge_datasets.main(["--input", str(tmp_path / "d*_text_document"), "--output-prefix", out]) == 0
    assert merge_datasets.main(["--input", str(tmp_path / "d0_text_document"), "--output-prefix", out]) == 2
    assert "exists (--overwrite replaces it)" in capsys.readouterr().err
    assert merge_datasets.main(["--input", str(tmp_path / "nothing*"), "--output-prefix", out + "x"]) == 2
    assert capsys.readouterr().err == f"error: --input {tmp_path / 'nothing*'}: no dataset (.idx) matches\n"
    assert merge_datasets.main(["--input", str(tmp_path / "d9_text_document"), "--output-prefix", out + "x"]) == 2
    assert "d9_text_document.bin: no such file" in capsys.readouterr().err
    assert len(IndexedDataset(out)) == 2 * 4 + 5  # DOCS: 4 sequences (an empty document, one of 2 sentences)


def test_empty_shard_is_written_and_said(tmp_path):
    """More shards than gzip files: the shard without a file writes an empty pair for the merge, and says so."""
    import io

    src = write_jsonl(tmp_path / "only.jsonl.gz", many_docs(30))
    log = io.StringIO()
    summary = preprocess(
        PreprocessConfig(
            inputs=[str(src)],
            output_prefix=str(tmp_path / "o"),
            shard_index=1,
            num_shards=2,
            tokenizer_type="ByteTokenizer",
        ),
        log=log,
    )
    assert summary.documents == 0 and "leave it out of a --data-path blend" in log.getvalue()
    assert plan_parts([str(src)], "jsonl", shard_ranges(src.stat().st_size, 2, 0)) == [[Part(0, "whole")]]

"""Unit tests for megatron_free/data/preprocess.py (tokenizing corpora into Megatron .bin/.idx)."""

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from megatron_free.data import preprocess as pp
from megatron_free.data.indexed import IndexedDatasetWriter
from megatron_free.data.preprocess import InputError, PreprocessConfig, main, preprocess
from megatron_free.data.tokenizers import ByteTokenizer, SentencePieceTokenizer
from megatron_free.data.train_tokenizer import TokenizerTrainingConfig, train_tokenizer

with warnings.catch_warnings():  # megatron.core warns that Transformer Engine / Apex are absent
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

REPO = Path(__file__).parents[2]
SHAKESPEARE = Path(__file__).parents[2] / "data" / "tinyshakespeare.txt"

DOCS = [
    {"text": "To be, or not to be: that is the question.", "title": "Hamlet"},
    {"text": "", "title": "empty text: kept as a zero-sequence document, as Megatron-LM does"},
    {"text": ["Pre-split ", "", "sentences été 日本"], "title": "list"},
    {"text": "Line one\nline two\r\n\ttabbed", "title": ""},
]


def write_jsonl(path, docs):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return path


def many_docs(n):
    return [{"text": f"document {i} " + "lorem ipsum " * (i % 13) + "é" * (i % 3)} for i in range(n)]


def run(tmp_path, inputs, name="out", **kwargs):
    """preprocess() into tmp_path/name; returns (summary, {key: (bin bytes, idx bytes)})."""
    kwargs.setdefault("tokenizer_type", "ByteTokenizer")
    config = PreprocessConfig(inputs=[str(p) for p in inputs], output_prefix=str(tmp_path / name), **kwargs)
    summary = preprocess(config, log=None)
    files = {key: (Path(p + ".bin").read_bytes(), Path(p + ".idx").read_bytes()) for key, p in summary.outputs.items()}
    return summary, files


def megatron_reference(tmp_path, input_path, tokenizer, json_keys, append_eod):
    """Megatron-LM tools/preprocess_data.py without --split-sentences, restated: Encoder.encode per JSON
    line, then IndexedDatasetBuilder(dtype=optimal_dtype(vocab_size)).add_document(doc, sentence_lens)."""
    builders, prefixes = {}, {}
    for key in json_keys:
        prefixes[key] = str(tmp_path / f"reference_{key}_document")
        builders[key] = IndexedDatasetBuilder(prefixes[key] + ".bin", dtype=DType.optimal_dtype(tokenizer.vocab_size))
    with open(input_path, "r", encoding="utf-8") as fin:
        for json_line in fin:
            data = json.loads(json_line)
            for key in json_keys:
                text = data[key]
                sentences = text if isinstance(text, list) else [text]
                doc_ids, sentence_lens = [], []
                for sentence in sentences:
                    sentence_ids = tokenizer.tokenize(sentence)
                    if len(sentence_ids) > 0:
                        doc_ids.extend(sentence_ids)
                        sentence_lens.append(len(sentence_ids))
                if len(doc_ids) > 0 and append_eod:
                    doc_ids.append(tokenizer.eod)
                    sentence_lens[-1] += 1
                builders[key].add_document(doc_ids, sentence_lens)
    out = {}
    for key in json_keys:
        builders[key].finalize(prefixes[key] + ".idx")
        out[key] = (Path(prefixes[key] + ".bin").read_bytes(), Path(prefixes[key] + ".idx").read_bytes())
    return out


def assert_no_output(directory):
    leftovers = sorted(p.name for p in Path(directory).iterdir() if not p.name.endswith((".jsonl", ".txt", ".gz")))
    assert leftovers == [], f"left behind: {leftovers}"


# ------------------------------------------------------------------------------------------ output format


def test_round_trip_reads_back_token_ids(tmp_path):
    """JSONL -> .bin/.idx -> megatron-core IndexedDataset gives each document's ids + eod, empty doc kept."""
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    summary, _ = run(tmp_path, [src], json_keys=("text",), append_eod=True)
    tok = ByteTokenizer()
    dataset = IndexedDataset(summary.outputs["text"])
    assert len(dataset.document_indices) - 1 == len(DOCS) == summary.documents
    assert summary.empty_documents == 1 and summary.skipped == 0
    expected = ["".join(d["text"]) if isinstance(d["text"], list) else d["text"] for d in DOCS]
    for doc, text in enumerate(expected):
        lo, hi = dataset.document_indices[doc], dataset.document_indices[doc + 1]
        ids = [int(t) for i in range(lo, hi) for t in dataset[i]]
        assert ids == (tok.tokenize(text) + [tok.eod] if text else [])
    assert dataset.index.dtype == np.uint16
    assert summary.tokens == sum(len(tok.tokenize(t)) + 1 for t in expected if t)


def test_bytes_identical_to_megatron_algorithm(tmp_path):
    """Two keys, list-valued sentences, empty docs: bytes equal Megatron-LM's encode + IndexedDatasetBuilder."""
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS + [dict(d, title=str(i)) for i, d in enumerate(many_docs(50))])
    _, ours = run(tmp_path, [src], json_keys=("text", "title"), append_eod=True)
    assert ours == megatron_reference(tmp_path, src, ByteTokenizer(), ("text", "title"), append_eod=True)
    _, ours = run(tmp_path, [src], name="noeod", json_keys=("text",))
    assert ours == megatron_reference(tmp_path, src, ByteTokenizer(), ("text",), append_eod=False)


def test_sentencepiece_bytes_identical_to_megatron_tokenizer(tmp_path):
    """A trained sentencepiece model: bytes equal the Megatron algorithm run with megatron-core's own tokenizer."""
    model = train_tokenizer(
        TokenizerTrainingConfig(
            inputs=[str(SHAKESPEARE)], model_prefix=str(tmp_path / "sp"), vocab_size=512, input_format="text-files"
        ),
        log=None,
    )
    lines = SHAKESPEARE.read_text(encoding="utf-8").split("\n\n")[:300]
    src = write_jsonl(tmp_path / "plays.jsonl", [{"text": t} for t in lines])
    _, ours = run(
        tmp_path, [src], tokenizer_type="SentencePieceTokenizer", tokenizer_model=model, append_eod=True, workers=2
    )
    from megatron.core.tokenizers import MegatronTokenizer

    megatron_tokenizer = MegatronTokenizer.from_pretrained(
        tokenizer_path=model, metadata_path={"library": "sentencepiece"}
    )
    assert ours == megatron_reference(tmp_path, src, megatron_tokenizer, ("text",), append_eod=True)
    assert SentencePieceTokenizer(model).vocab_size == 512


def test_fast_path_bytes_identical_to_megatron_on_real_text_and_hard_cases(tmp_path):
    """The default (gigatoken, FastSentencePiece) path on stdlib code, Shakespeare and the hard cases (special-token
    strings, Unicode, whitespace runs, a 1 MB line, empty documents), two keys, pre-split sentences, 2 workers:
    bytes equal Megatron-LM's algorithm with megatron-core's sentencepiece tokenizer, and --no-fast-tokenizer's."""
    from megatron.core.tokenizers import MegatronTokenizer

    from tests.unit.test_fast_tokenizer import HARD_CASES, real_texts

    model = train_tokenizer(
        TokenizerTrainingConfig(
            inputs=[str(SHAKESPEARE)], model_prefix=str(tmp_path / "sp"), vocab_size=1024, input_format="text-files"
        ),
        log=None,
    )
    texts = real_texts() + HARD_CASES
    docs = [{"text": t, "title": HARD_CASES[i % len(HARD_CASES)]} for i, t in enumerate(texts)]
    docs += [{"text": HARD_CASES[i : i + 3], "title": ["", "<s>"]} for i in range(0, len(HARD_CASES), 3)]
    docs += [{"text": "", "title": ""}, {"text": [], "title": [""]}]
    src = write_jsonl(tmp_path / "hard.jsonl", docs)
    summary, fast = run(
        tmp_path,
        [src],
        name="fast",
        tokenizer_type="SentencePieceTokenizer",
        tokenizer_model=model,
        json_keys=("text", "title"),
        append_eod=True,
        workers=2,
    )
    assert summary.empty_documents > 0 and summary.documents == len(docs)
    megatron_tokenizer = MegatronTokenizer.from_pretrained(
        tokenizer_path=model, metadata_path={"library": "sentencepiece"}
    )
    assert fast == megatron_reference(tmp_path, src, megatron_tokenizer, ("text", "title"), append_eod=True)
    _, slow = run(
        tmp_path,
        [src],
        name="slow",
        tokenizer_type="SentencePieceTokenizer",
        tokenizer_model=model,
        json_keys=("text", "title"),
        append_eod=True,
        fast_tokenizer=False,
    )
    assert slow == fast


def test_unigram_model_says_it_uses_sentencepiece(tmp_path):
    """A unigram model: one log line saying why, and the bytes of the sentencepiece path."""
    model = train_tokenizer(
        TokenizerTrainingConfig(
            inputs=[str(SHAKESPEARE)],
            model_prefix=str(tmp_path / "uni"),
            vocab_size=512,
            input_format="text-files",
            model_type="unigram",
        ),
        log=None,
    )
    src = write_jsonl(tmp_path / "in.jsonl", DOCS)
    log = io.StringIO()
    preprocess(
        PreprocessConfig(
            inputs=[str(src)],
            output_prefix=str(tmp_path / "uni"),
            append_eod=True,
            tokenizer_type="SentencePieceTokenizer",
            tokenizer_model=model,
        ),
        log=log,
    )
    notes = [line for line in log.getvalue().splitlines() if "sentencepiece encodes every document" in line]
    assert len(notes) == 1 and "unigram" in notes[0]


def test_lone_surrogate_is_a_file_line_error(tmp_path):
    """A JSON "\\ud800" escape that no tokenizer can encode: one line naming the file and line."""
    model = train_tokenizer(
        TokenizerTrainingConfig(
            inputs=[str(SHAKESPEARE)], model_prefix=str(tmp_path / "sp"), vocab_size=512, input_format="text-files"
        ),
        log=None,
    )
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "good"}\n' * 3 + b'{"text": "x\\ud800y"}\n' + b'{"text": "good"}\n')
    with pytest.raises(InputError, match=rf"^{src}:4: cannot tokenize"):
        run(tmp_path, [src], tokenizer_type="SentencePieceTokenizer", tokenizer_model=model)


def test_workers_and_partitions_give_identical_bytes(tmp_path):
    """workers=2, partitions=2 and 3 (over a glob of 3 files, across file boundaries) give the workers=1 bytes."""
    docs = many_docs(700)
    for i, part in enumerate((docs[:300], docs[300:301], docs[301:])):
        write_jsonl(tmp_path / f"shard{i}.jsonl", part)
    glob = tmp_path / "shard*.jsonl"
    _, reference = run(tmp_path, [glob], name="w1", append_eod=True)
    for name, kwargs in {
        "w2": dict(workers=2),
        "p2": dict(partitions=2),
        "p3w2": dict(partitions=3, workers=2),
        "p2w4": dict(partitions=2, workers=4),
    }.items():
        summary, output = run(tmp_path, [glob], name=name, append_eod=True, **kwargs)
        assert output == reference, name
        assert summary.documents == 700
    assert len(IndexedDataset(str(tmp_path / "p2_text_document"))) == 700


def test_gzip_and_glob_inputs(tmp_path):
    """A .jsonl.gz reads as its plain twin; a glob equals the files concatenated in sorted order."""
    docs = many_docs(40)
    plain = write_jsonl(tmp_path / "all.jsonl", docs)
    write_jsonl(tmp_path / "part-b.jsonl.gz", docs[25:])
    write_jsonl(tmp_path / "part-a.jsonl", docs[:25])
    _, reference = run(tmp_path, [plain], name="plain")
    _, globbed = run(tmp_path, [tmp_path / "part-*"], name="glob")
    assert globbed == reference
    gz = write_jsonl(tmp_path / "all.jsonl.gz", docs)
    _, gzipped = run(tmp_path, [gz], name="gz", workers=2)
    assert gzipped == reference
    with pytest.raises(InputError, match="no file matches"):
        run(tmp_path, [tmp_path / "nothing-*.jsonl"], name="none")


def test_text_formats_on_shakespeare(tmp_path):
    """text-lines: one document per non-blank line; text-files: one document per file, an empty file an empty one."""
    text = SHAKESPEARE.read_text(encoding="utf-8")
    lines = text.split("\n")
    summary, _ = run(tmp_path, [SHAKESPEARE], name="lines", input_format="text-lines", append_eod=True, workers=2)
    assert summary.documents == sum(1 for line in lines if line.strip())
    assert summary.blank_lines == sum(1 for line in lines if not line.strip()) - (1 if text.endswith("\n") else 0)
    dataset = IndexedDataset(summary.outputs["text"])
    assert bytes(dataset[1][:-1].astype(np.uint8)).decode() == [line for line in lines if line.strip()][1]
    empty = tmp_path / "__init__.py"
    empty.write_bytes(b"")
    for partitions in (1, 2):
        summary, _ = run(
            tmp_path, [SHAKESPEARE, empty], name=f"file{partitions}", input_format="text-files", partitions=partitions
        )
        assert (summary.documents, summary.empty_documents, summary.skipped) == (2, 1, 0)
        assert summary.tokens == len(text.encode("utf-8"))


# ------------------------------------------------------------------------------------------ bad input

BAD_LINES = {
    "malformed JSON": (b'{"text": "a" "b"}\n', "malformed JSON (Expecting ',' delimiter: column 14)"),
    "missing key": (b'{"txt": "x"}\n', "missing key 'text'"),
    "invalid UTF-8": (b'{"text": "caf\xe9"}\n', "invalid UTF-8 (byte 0xe9 at column 14)"),
    "not a string": (b'{"text": 3}\n', "key 'text' is not a string (got a number)"),
    "not an object": (b'["text"]\n', "not a JSON object (got an array)"),
    "blank line": (b" \n", "blank line (JSONL needs one JSON object per line)"),
}


@pytest.mark.parametrize("partitions", [1, 2])
@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_line_is_a_one_line_error_and_leaves_nothing(tmp_path, capsys, case, partitions):
    """Each bad line: exit 2, `error: file:line: what` on stderr, no .bin/.idx or temporary left."""
    bad, message = BAD_LINES[case]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "good"}\n' * 3 + bad + b'{"text": "good"}\n' * 3)
    argv = [
        "--input",
        str(src),
        "--output-prefix",
        str(tmp_path / "out"),
        "--tokenizer-type",
        "ByteTokenizer",
        "--partitions",
        str(partitions),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src}:4: {message}") and err.count("\n") == 1, err
    assert_no_output(tmp_path)


def test_empty_input_is_an_error(tmp_path, capsys):
    """An empty file (alone or in a glob) and an input with no tokens are errors naming the file; nothing written."""
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert (
        main(["--input", str(empty), "--output-prefix", str(tmp_path / "o"), "--tokenizer-type", "ByteTokenizer"]) == 2
    )
    assert capsys.readouterr().err == f"error: {empty}:1: empty input (no documents)\n"
    no_tokens = write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}] * 3)
    with pytest.raises(InputError, match="empty input: no tokens under key 'text'"):
        run(tmp_path, [no_tokens])
    no_titles = write_jsonl(tmp_path / "notitle.jsonl", [{"text": "a", "title": ""}] * 3)
    with pytest.raises(InputError, match="empty input: no tokens under key 'title'"):
        run(tmp_path, [no_titles], json_keys=("text", "title"))
    assert_no_output(tmp_path)


def test_skip_bad_lines_counts_them(tmp_path):
    """--skip-bad-lines: bad lines and empty files are skipped and counted; the rest equals a clean input."""
    docs = many_docs(30)
    clean = write_jsonl(tmp_path / "clean.jsonl", docs)
    dirty = tmp_path / "dirty.jsonl"
    lines = [json.dumps(d).encode() + b"\n" for d in docs]
    for i, (bad, _) in enumerate(BAD_LINES.values()):
        lines.insert(3 * i + 1, bad)
    dirty.write_bytes(b"".join(lines))
    (tmp_path / "empty.txt").write_bytes(b"")
    _, reference = run(tmp_path, [clean], name="clean")
    for partitions in (1, 2):
        summary, output = run(
            tmp_path,
            [dirty, tmp_path / "empty.txt"],
            name=f"dirty{partitions}",
            skip_bad_lines=True,
            partitions=partitions,
        )
        assert output == reference
        assert (summary.documents, summary.skipped) == (30, len(BAD_LINES) + 1)
    log = io.StringIO()
    preprocess(
        PreprocessConfig(
            inputs=[str(dirty)],
            output_prefix=str(tmp_path / "logged"),
            tokenizer_type="ByteTokenizer",
            skip_bad_lines=True,
        ),
        log=log,
    )
    assert log.getvalue().count("(skipped)") == len(BAD_LINES)
    assert f"30 documents (0 empty), {reference_tokens(reference)} tokens, {len(BAD_LINES)} skipped" in log.getvalue()


def reference_tokens(files):
    return f"{len(files['text'][0]) // 2:,}"  # uint16 tokens


def test_bad_line_in_worker_process_and_cli_subprocess(tmp_path):
    """The console entry point: exit code 2, one line on stderr, no traceback (worker pool path)."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "good"}\n' * 100 + b'{"oops": 1}\n')
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "preprocess_data.py"),
            "--input",
            str(src),
            "--output-prefix",
            str(tmp_path / "out"),
            "--tokenizer-type",
            "ByteTokenizer",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"error: {src}:101: missing key 'text'"
    assert "Traceback" not in result.stderr
    assert_no_output(tmp_path)


def test_corrupt_gzip_is_a_file_line_error(tmp_path):
    """A truncated .gz stream is reported at the line where reading failed."""
    data = gzip.compress(b'{"text": "good"}\n' * 1000)
    src = tmp_path / "in.jsonl.gz"
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=rf"{src}:\d+: cannot read \(EOFError"):
        run(tmp_path, [src])
    assert_no_output(tmp_path)


# ------------------------------------------------------------------------------------------ interruption


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch, workers):
    """An exception (or Ctrl-C) mid-way through writing: no .bin/.idx and no temporary folder remain."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "x" * 100_000}] * 40)  # 4 batches
    calls = {"n": 0}
    original = IndexedDatasetWriter.add_documents

    def failing_add_documents(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt if workers == 2 else RuntimeError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(IndexedDatasetWriter, "add_documents", failing_add_documents)
    with pytest.raises(KeyboardInterrupt if workers == 2 else RuntimeError):
        run(tmp_path, [src], workers=workers)
    assert_no_output(tmp_path)


@pytest.mark.slow
def test_sigterm_mid_run_cleans_up(tmp_path):
    """SIGTERM to the CLI while partition processes and their workers write: exit 143, nothing and no process left."""
    src = write_jsonl(tmp_path / "in.jsonl", many_docs(300_000))
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tools" / "preprocess_data.py"),
            "--input",
            str(src),
            "--output-prefix",
            str(tmp_path / "out"),
            "--tokenizer-type",
            "ByteTokenizer",
            "--partitions",
            "2",
            "--workers",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while len(list(tmp_path.glob(".out.tmp-*/part*_text.bin"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    assert len(_processes_mentioning(src)) >= 3  # the CLI and both partition processes
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143 and err.splitlines()[-1] == "error: terminated; no output written", err
    assert_no_output(tmp_path)
    time.sleep(0.5)
    assert _processes_mentioning(src) == []  # no partition process or pool worker outlives the CLI


def _processes_mentioning(path):
    """Live processes whose command line holds `path` (forked workers keep their parent's command line)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(path).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass
    return pids


def test_crash_between_renames_leaves_no_valid_pair(tmp_path, monkeypatch):
    """Dying after the .bin is moved into place but before the .idx: no pair that IndexedDataset would open,
    even when an older complete pair was there before."""
    src = write_jsonl(tmp_path / "in.jsonl", many_docs(20))
    summary, _ = run(tmp_path, [src])  # an older, complete pair
    prefix = summary.outputs["text"]
    assert IndexedDataset.exists(prefix)
    real_replace = os.replace

    def replace(source, target):
        if str(target).endswith(".idx"):
            raise OSError("killed")
        return real_replace(source, target)

    monkeypatch.setattr(pp.os, "replace", replace)
    with pytest.raises(OSError, match="killed"):
        run(tmp_path, [write_jsonl(tmp_path / "new.jsonl", many_docs(5))])
    assert not IndexedDataset.exists(prefix)
    assert sorted(p.name for p in tmp_path.iterdir() if "out" in p.name) == ["out_text_document.bin"]


# ------------------------------------------------------------------------------------------ reporting


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_terminal_and_log_lines(tmp_path):
    """A redrawn line on a terminal, plain periodic lines otherwise; the summary names
    documents/tokens/skipped/seconds."""
    src = write_jsonl(tmp_path / "in.jsonl", many_docs(600))
    log = io.StringIO()
    preprocess(
        PreprocessConfig(
            inputs=[str(src)],
            output_prefix=str(tmp_path / "a"),
            tokenizer_type="ByteTokenizer",
            log_interval_seconds=0.0,
        ),
        log=log,
    )
    lines = log.getvalue().splitlines()
    assert len(lines) >= 2 and "\r" not in log.getvalue()
    assert "docs/s" in lines[0] and "tokens/s" in lines[0] and "MB/s" in lines[0]
    assert lines[-1].startswith("[preprocess] done: 600 documents (0 empty),") and " 0 skipped" in lines[-1]
    assert " s (" in lines[-1] and "a_text_document.{bin,idx}" in lines[-1]
    terminal = FakeTerminal()
    progress = pp._Progress(terminal, bar=None, interval_seconds=10.0, total_bytes=200)
    progress.last -= 1.0  # a terminal redraws every 0.1 s, whatever the log interval
    progress.progress(pp.Counts(documents=5, tokens=70, input_bytes=50, skipped=1))
    assert terminal.getvalue().startswith("\r\033[K5 docs, 70 tokens | ") and terminal.getvalue().endswith(
        "MB/s | 25% | 1 skipped"
    )
    progress.warning("x.jsonl:3: missing key 'text' (skipped)")
    assert terminal.getvalue().endswith("\r\033[Kwarning: x.jsonl:3: missing key 'text' (skipped)\n")


def test_config_errors_name_the_flag(tmp_path):
    """Configuration errors name the flag and value."""
    src = str(write_jsonl(tmp_path / "in.jsonl", many_docs(2)))
    with pytest.raises(InputError, match="--workers 0"):
        PreprocessConfig(inputs=[src], output_prefix="o", tokenizer_type="ByteTokenizer", workers=0)
    with pytest.raises(InputError, match="--input-format text-lines has one text"):
        PreprocessConfig(
            inputs=[src],
            output_prefix="o",
            tokenizer_type="ByteTokenizer",
            input_format="text-lines",
            json_keys=("a", "b"),
        )
    with pytest.raises(InputError, match="--tokenizer-model .*missing.model"):
        run(tmp_path, [src], tokenizer_type="SentencePieceTokenizer", tokenizer_model=str(tmp_path / "missing.model"))
    assert_no_output(tmp_path)

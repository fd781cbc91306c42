"""Input files for preprocessing: which records a shard reads, reading them by streaming, and the
document texts they hold.

Formats: jsonl and text-lines (one record per line), text-files (one record per file), parquet (one
record per row; pyarrow, row group by row group) and arrow (the .arrow files that HuggingFace
`datasets` save_to_disk writes, Arrow IPC streams read through a memory map; a save_to_disk folder
stands for its data files in state.json's order). .gz files are read as gzip. Several files or globs
('**' recursive).

Documents: JSONL has one JSON object per line, text under each of --json-keys (a list of strings
counts as pre-split sentences, as in Megatron-LM); plain text has one document per line (text-lines;
blank lines are not documents) or per file (text-files; an empty file is an empty document); parquet
and arrow have the --json-keys columns.

Shards. Every record has a position in [0, W), W the total size of the input files in bytes, taken
in input order: a line's is the byte where it starts, a row's is its file's start plus
row * file size / rows, and a record that cannot be reached without reading its whole file (a gzip
line, a text-files file) has its file's start. Shard i of N holds the records whose position lies in
[i W / N, (i + 1) W / N). So the shards are a partition of the input into contiguous runs, their
concatenation in shard order is the whole input in input order (merging them gives a single run's
bytes), and a shard finds its records without reading anything before them: a seek to the byte
range, or parquet/arrow row counts from the metadata. A shard can be empty (more shards than
gzip files).

Records come out as (location, payload, nbytes, error): payload is the line or file as bytes (jsonl,
text) or one value per column (parquet, arrow); parse_record turns a payload into each key's
sentences, or says what is wrong with it. Locations become `path:line` / `path: row N` only when an
error is reported (a shard that starts mid-file counts the lines before it then).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import zlib

LINE_FORMATS = ("jsonl", "text-lines")
COLUMN_FORMATS = ("parquet", "arrow")
INPUT_FORMATS = ("jsonl", "text-lines", "text-files", "parquet", "arrow")
READ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError
ROWS_PER_READ = 1024  # parquet/arrow rows per batch read: memory is a few batches, never a file


class InputError(ValueError):
    """Bad input or configuration: reported as one line, without a traceback."""


@dataclasses.dataclass(frozen=True)
class Part:
    """A contiguous run of one file's records: bytes [start, stop) of line starts ("lines"), rows
    [start, stop) ("rows"), or the whole file ("whole")."""

    file_index: int
    kind: str
    start: int = 0
    stop: int | None = None


# ----------------------------------------------------------------------------------------- files


def resolve_inputs(patterns: list[str], input_format: str = "jsonl") -> list[str]:
    """Files named by paths and globs ('**' recursive), each glob sorted, duplicates dropped.

    arrow: a folder written by `datasets`' save_to_disk stands for its data files."""
    files, seen = [], set()
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise InputError(f"--input {pattern}: no file matches")
        elif os.path.isfile(pattern):
            matches = [pattern]
        elif os.path.isdir(pattern) and input_format == "arrow":
            matches = saved_dataset_files(pattern)
        else:
            raise InputError(f"--input {pattern}: no such file")
        for path in matches:
            if path not in seen:
                seen.add(path)
                files.append(path)
    return files


def total_size(files: list[str]) -> int:
    """The bytes of `files` together: the end of the position range that shards divide."""
    return sum(os.path.getsize(f) for f in files)


def saved_dataset_files(folder: str) -> list[str]:
    """The data files of a `datasets` save_to_disk folder, in the dataset's row order."""
    state = os.path.join(folder, "state.json")
    if os.path.isfile(state):
        try:
            with open(state, encoding="utf-8") as f:
                names = [entry["filename"] for entry in json.load(f)["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"--input {folder}: unreadable state.json ({type(e).__name__}: {e})") from None
        return [os.path.join(folder, name) for name in names]
    if os.path.isfile(os.path.join(folder, "dataset_dict.json")):
        raise InputError(f"--input {folder}: a DatasetDict; give one split's folder (e.g. {folder}/train)")
    files = sorted(glob.glob(os.path.join(folder, "*.arrow")))
    if not files:
        raise InputError(f"--input {folder}: no state.json or .arrow file (not a save_to_disk folder)")
    return files


def open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _arrow_reader(path: str):
    import pyarrow as pa

    source = pa.memory_map(path)
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        return pa.ipc.open_file(source)  # an Arrow IPC file rather than a stream


def _arrow_batches(path: str):
    reader = _arrow_reader(path)
    if hasattr(reader, "num_record_batches"):  # IPC file
        return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
    return reader.schema, iter(reader)


def count_rows(path: str, input_format: str) -> int:
    """Rows of a parquet or arrow file, from the metadata (parquet) or the batch headers (arrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if input_format == "parquet":
            return pq.ParquetFile(path).metadata.num_rows
        _, batches = _arrow_batches(path)
        return sum(batch.num_rows for batch in batches)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable {input_format} file ({type(e).__name__}: {e})") from None


def check_columns(path: str, input_format: str, keys) -> None:
    """One line naming the file when a --json-keys column is missing."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"--input-format {input_format} needs pyarrow: pip install 'megatron-free[data]'") from None

    try:
        schema = pq.read_schema(path) if input_format == "parquet" else _arrow_batches(path)[0]
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable {input_format} file ({type(e).__name__}: {e})") from None
    missing = [key for key in keys if key not in schema.names]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r} (--json-keys; columns: {', '.join(schema.names)})")


# ----------------------------------------------------------------------------------------- shards


def plan_parts(files: list[str], input_format: str, ranges: list[tuple[int, int]], keys=()) -> list[list[Part]]:
    """For each position range [lo, hi), the parts of `files` whose records lie in it (see the module doc)."""
    sizes = [os.path.getsize(f) for f in files]
    rows = [None] * len(files)
    total, plans = sum(sizes), [[] for _ in ranges]
    offset = 0
    for index, (path, size) in enumerate(zip(files, sizes)):
        columnar = input_format in COLUMN_FORMATS
        splittable = input_format in LINE_FORMATS and not path.endswith(".gz") and size > 0
        for plan, (lo, hi) in zip(plans, ranges):
            if columnar and size > 0 and offset + size > lo and offset < hi:
                if rows[index] is None:
                    check_columns(path, input_format, keys)
                    rows[index] = count_rows(path, input_format)
                n = rows[index]
                first, last = _row_at(lo - offset, n, size), _row_at(hi - offset, n, size)
                if first < last or (n == 0 and lo <= offset < hi):
                    plan.append(Part(index, "rows", first, last))
            elif splittable and offset + size > lo and offset < hi:
                plan.append(Part(index, "lines", max(lo - offset, 0), min(hi - offset, size)))
            elif not splittable and not columnar and lo <= offset < hi:
                plan.append(Part(index, "whole"))
            elif columnar and size == 0 and lo <= offset < hi:
                plan.append(Part(index, "rows", 0, 0))
        offset += size
    assert offset == total
    return plans


def _row_at(position: int, rows: int, size: int) -> int:
    """The first row whose position (row * size // rows) is >= position, clamped to [0, rows]."""
    if position <= 0:
        return 0
    return min(rows, -(-position * rows // size))


def shard_ranges(total: int, num_shards: int, shard_index: int = 0, partitions: int = 1) -> list[tuple[int, int]]:
    """The position range of shard shard_index of num_shards, cut into `partitions` contiguous ranges.

    The last range ends past `total` so that a trailing empty file (position == total) has a shard."""

    def bound(i, n, lo, hi):
        return lo + (hi - lo) * i // n

    lo, hi = bound(shard_index, num_shards, 0, total), bound(shard_index + 1, num_shards, 0, total)
    if shard_index == num_shards - 1:
        hi = total + 1
    return [(bound(j, partitions, lo, hi), bound(j + 1, partitions, lo, hi)) for j in range(partitions)]


# ----------------------------------------------------------------------------------------- reading


def read_parts(files: list[str], parts: list[Part], input_format: str, keys):
    """Yield (location, payload, nbytes, error) for the records of `parts`, in order.

    location: (file_index, part start byte, line number in the part) for line formats, (file_index,
    None, row) for parquet/arrow. A read error (a corrupt gzip stream) yields an error record and ends
    that part. A whole empty file of a line format (or a parquet/arrow file of no rows) yields an
    "empty input" error record."""
    for part in parts:
        if part.kind == "rows":
            yield from _read_rows(files[part.file_index], part, input_format, keys)
        else:
            yield from _read_lines(files[part.file_index], part, input_format)


def _read_lines(path: str, part: Part, input_format: str):
    start = part.start if part.kind == "lines" else 0
    line = 0
    try:
        with open_binary(path) as f:
            if input_format == "text-files":
                payload = f.read()  # an empty file is an empty document, not an error
                yield (part.file_index, 0, 1), payload, len(payload), None
                return
            if start > 0:
                f.seek(start - 1)
                if f.read(1) != b"\n":
                    f.readline()  # the line that starts before `start` belongs to the previous part
                position = f.tell()
                start = position
            else:
                position = 0
            for line, payload in enumerate(f, start=1):
                if part.stop is not None and position >= part.stop:
                    break
                position += len(payload)
                yield (part.file_index, start, line), payload, len(payload), None
    except READ_ERRORS as e:
        yield (part.file_index, start, line + 1), None, 0, f"cannot read ({type(e).__name__}: {e})"
        return
    if line == 0 and part.kind == "whole":
        yield (part.file_index, 0, 1), None, 0, "empty input (no documents)"


def _read_rows(path: str, part: Part, input_format: str, keys):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if part.start == part.stop:
        if part.start == 0:
            yield (part.file_index, None, 0), None, 0, "empty input (no rows)"
        return
    try:
        if input_format == "parquet":
            batches = _parquet_batches(pq.ParquetFile(path), part.start, part.stop, keys)
        else:
            batches = _arrow_row_batches(path, part.start, part.stop, keys)
        for row, batch in batches:
            columns = [batch.column(key) for key in keys]
            values = [column.to_pylist() for column in columns]
            nbytes = _utf8_sizes(columns, pc)
            for i in range(batch.num_rows):
                yield (part.file_index, None, row + i), tuple(v[i] for v in values), nbytes[i], None
    except (pa.ArrowException, OSError) as e:
        yield (part.file_index, None, part.start), None, 0, f"cannot read ({type(e).__name__}: {e})"


def _utf8_sizes(columns, pc) -> list[int]:
    sizes = None
    for column in columns:
        try:
            n = pc.fill_null(pc.binary_length(column), 0)
        except Exception:  # noqa: BLE001 - not a string column: the type error is reported per row
            continue
        sizes = n if sizes is None else pc.add(sizes, n)
    return sizes.to_pylist() if sizes is not None else [0] * len(columns[0])


def _parquet_batches(parquet_file, start: int, stop: int, keys):
    """(first row, batch) for rows [start, stop), reading only the row groups that hold them."""
    metadata, first = parquet_file.metadata, 0
    for group in range(metadata.num_row_groups):
        n = metadata.row_group(group).num_rows
        if first + n > start and first < stop:
            row = first
            for batch in parquet_file.iter_batches(batch_size=ROWS_PER_READ, row_groups=[group], columns=list(keys)):
                lo, hi = max(start - row, 0), min(stop - row, batch.num_rows)
                if lo < hi:
                    yield row + lo, batch.slice(lo, hi - lo)
                row += batch.num_rows
        first += n
        if first >= stop:
            return


def _arrow_row_batches(path: str, start: int, stop: int, keys):
    _, batches = _arrow_batches(path)
    row = 0
    for batch in batches:
        lo, hi = max(start - row, 0), min(stop - row, batch.num_rows)
        for offset in range(lo, hi, ROWS_PER_READ):
            yield row + offset, batch.slice(offset, min(ROWS_PER_READ, hi - offset)).select(list(keys))
        row += batch.num_rows
        if row >= stop:
            return


def describe(files: list[str], location) -> str:
    """`path:line` (lines counted from 1 in the file) or `path: row N` (rows counted from 0, as pyarrow)."""
    file_index, start, index = location
    path = files[file_index]
    if start is None:
        return f"{path}: row {index}"
    if start > 0:  # a part that starts mid-file: count the lines before it, only now that an error needs it
        with open(path, "rb") as f:
            before = 0
            remaining = start
            while remaining > 0 and (chunk := f.read(min(remaining, 1 << 24))):
                before += chunk.count(b"\n")
                remaining -= len(chunk)
        index += before
    return f"{path}:{index}"


# ----------------------------------------------------------------------------------------- documents


def parse_record(payload, input_format: str, json_keys, location):
    """(per-key sentence lists | None for a blank text line, error | None, location of the error)."""
    if input_format in COLUMN_FORMATS:
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
    names = {
        dict: "an object",
        list: "an array",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def iter_documents(
    inputs: list[str], input_format: str = "jsonl", json_key: str = "text", skip_bad_lines: bool = False
):
    """Yield document texts (one process, input order); bad lines raise InputError or are skipped.

    For callers that want text rather than token ids (tokenizer training). Lists of sentences are joined by newlines.
    """
    files = resolve_inputs(inputs, input_format)
    parts = plan_parts(files, input_format, shard_ranges(total_size(files), 1), (json_key,))[0]
    for location, payload, _, error in read_parts(files, parts, input_format, (json_key,)):
        text = None
        if error is None:
            text, error, location = parse_record(payload, input_format, (json_key,), location)
        if error is not None:
            if not skip_bad_lines:
                raise InputError(f"{describe(files, location)}: {error}")
            continue
        if text is not None:
            yield "\n".join(text[0])

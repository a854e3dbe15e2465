"""Open a scoring input (a Parquet file, a directory of Parquet or CSV files, or a CSV file) and stream its
record batches with memory bounded by the batch size, whatever the input's size.

Files are found (and hidden or `_`-prefixed ones such as `_SUCCESS` skipped) by pyarrow.dataset, which also
gives the schema; the row count of Parquet comes from the footers (no data read). Rows are then read file by
file in a background thread that stays at most two batches ahead: Parquet with `pre_buffer=False` and a
buffered stream (pyarrow's pre-buffering and the dataset scanner's readahead both keep hundreds of MB in
flight when inference is the slower side), CSV with pyarrow's streaming reader.

CSV columns the model uses are read with the type the model needs (float64 for numeric features, string
for categorical ones), so a category that looks like a number stays a category and a numeric column is not
broken by Arrow's type inference on the first block; a value that is not a number fails with a one-line
error naming the column and line.
"""

from __future__ import annotations

import csv
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cloud_sync.batch.columns import check_schema
from contracts.errors import InputError, NotFoundError
from contracts.manifest import Manifest

__all__ = ["READ_BUFFER", "READ_ERRORS", "InputTable", "arrow_error", "conform_batch", "csv_reader", "open_input"]

_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
READ_BUFFER = 1 << 20
READ_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OSError)


@dataclass(frozen=True)
class InputTable:
    path: Path
    format: Literal["parquet", "csv"]
    files: tuple[str, ...]
    schema: pa.Schema
    """The first file's schema; later files are conformed to it (same columns by name, cast types)."""
    rows: int | None
    """Row count from Parquet metadata; None for CSV (unknown until read)."""
    csv_types: dict[str, pa.DataType] = field(default_factory=dict)

    def batches(self, batch_rows: int, depth: int = 2) -> Iterator[pa.RecordBatch]:
        """Stream the input in batches of at most `batch_rows` rows, read up to `depth` batches ahead."""
        reader = _Prefetch(self._read(batch_rows), depth)
        try:
            yield from reader
        finally:
            reader.close()

    def _read(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        for name in self.files:
            try:
                if self.format == "parquet":
                    source = pq.ParquetFile(name, pre_buffer=False, buffer_size=READ_BUFFER)
                    batches: Iterator[pa.RecordBatch] = source.iter_batches(batch_size=batch_rows, use_threads=True)
                else:
                    batches = iter(csv_reader(name, self.csv_types))
                for batch in batches:
                    yield batch if batch.schema == self.schema else conform_batch(batch, self.schema, name)
            except READ_ERRORS as exc:
                raise arrow_error(Path(name), exc, self.format) from None


def csv_reader(name: str, types: dict[str, pa.DataType]) -> pacsv.CSVStreamingReader:
    """pyarrow's streaming CSV reader with the model's column types (see the module docstring)."""
    return pacsv.open_csv(name, convert_options=pacsv.ConvertOptions(column_types=types))


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema, name: str) -> pa.RecordBatch:
    """`batch` of the file `name` with the columns and types of `schema` (the first file's), or an InputError."""
    missing = [column for column in schema.names if column not in batch.schema.names]
    if missing:
        raise InputError(f"{name} lacks the column '{missing[0]}' that the first file of the input has")
    try:
        columns = [batch.column(f.name).cast(f.type) for f in schema]
    except READ_ERRORS as exc:
        raise arrow_error(Path(name), exc, "input") from None
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class _End:
    pass


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Prefetch:
    """Run an iterator in a background thread, at most `depth` items ahead (Arrow decoding releases the GIL,
    so reading overlaps inference); errors are raised in the consumer."""

    def __init__(self, source: Iterator[pa.RecordBatch], depth: int) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), name="edgeloop-reader", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterator[pa.RecordBatch]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_End())
        except BaseException as exc:  # handed to the consumer
            self._put(_Failure(exc))

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            item = self._queue.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


_CSV_VALUE = re.compile(r"In CSV column #(?P<column>\d+): (Row #(?P<row>\d+): )?CSV conversion error to (?P<type>\w+)")
_CSV_SOURCE = re.compile(r"CSV input source '(?P<file>[^']+)'")


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def arrow_error(path: Path, exc: BaseException, kind: str) -> InputError:
    """One line from a pyarrow error (they can span several lines, nest their causes and carry C++ source
    locations); a CSV value that is not a number names its column and line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^/\S+\.cc:\d+\s+", "", text)
    value = _CSV_VALUE.search(text)
    if value:
        source = _CSV_SOURCE.search(text)
        where = Path(source["file"]) if source else path
        header = _csv_header(where) if where.is_file() else []
        index = int(value["column"])
        column = header[index] if index < len(header) else f"#{index + 1}"
        found = text.rsplit("invalid value ", 1)[-1] if "invalid value " in text else "a value"
        line = f" line {value['row']}" if value["row"] else ""
        return InputError(f"{where}{line}: column '{column}' must be a number (the model reads it as one), got {found}")
    if ": Invalid: " in text:
        text = text.rsplit(": Invalid: ", 1)[1]
    elif "Could not open " in text and "': " in text:
        text = text.rsplit("': ", 1)[1]
    return InputError(f"{path} is not a readable {kind} input: {text}")


def _format_of(path: Path) -> Literal["parquet", "csv"]:
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))]
        if not files:
            raise InputError(f"input directory {path} has no data files")
        if all(p.name.lower().endswith(_CSV_SUFFIXES) for p in files):
            return "csv"
        return "parquet"
    name = path.name.lower()
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    with path.open("rb") as handle:
        if handle.read(4) == b"PAR1":
            return "parquet"
    raise InputError(f"{path}: unknown input format; use a .parquet or .csv file or a directory of them")


def _check_parquet_files(dataset: ds.FileSystemDataset, manifest: Manifest) -> int:
    """Check every file's own schema (a dataset takes its schema from the first file) and count the rows,
    from the footers only, so that a file that does not fit is an error before any work starts."""
    rows = 0
    for fragment in dataset.get_fragments():
        check_schema(fragment.physical_schema, manifest, fragment.path)
        rows += fragment.metadata.num_rows
    return rows


def open_input(path: Path, manifest: Manifest) -> InputTable:
    """Open `path` for streaming; raise NotFoundError or a one-line InputError when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"input {path} not found")
    try:
        kind = _format_of(path)
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None
    types: dict[str, pa.DataType] = {}
    try:
        if kind == "parquet":
            dataset = ds.dataset(path, format="parquet")
            rows: int | None = _check_parquet_files(dataset, manifest) if path.is_dir() else dataset.count_rows()
        else:
            types = {spec.name: pa.float64() if spec.kind == "numeric" else pa.string() for spec in manifest.inputs}
            file_format = ds.CsvFileFormat(convert_options=pacsv.ConvertOptions(column_types=types))
            dataset = ds.dataset(path, format=file_format)
            rows = None
    except READ_ERRORS as exc:
        raise arrow_error(path, exc, kind) from None
    assert isinstance(dataset, ds.FileSystemDataset)
    return InputTable(path, kind, tuple(dataset.files), dataset.schema, rows, types)

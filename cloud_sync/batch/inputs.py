"""Open a scoring input (a Parquet file, a directory of Parquet or CSV files, or a CSV file) as a
pyarrow dataset that streams record batches, with its Arrow schema and, for Parquet, its row count from
the file footers (no data read).

CSV columns the model uses are read with the type the model needs (float64 for numeric features, string
for categorical ones), so a category that looks like a number stays a category and a numeric column is not
broken by Arrow's type inference on the first block; a value that is not a number fails with a one-line
error naming the column.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

from cloud_sync.batch.columns import check_schema
from contracts.errors import InputError, NotFoundError
from contracts.manifest import Manifest

__all__ = ["InputTable", "arrow_error", "open_input"]

_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


@dataclass(frozen=True)
class InputTable:
    path: Path
    format: Literal["parquet", "csv"]
    dataset: ds.Dataset
    rows: int | None
    """Row count from Parquet metadata; None for CSV (unknown until read)."""

    @property
    def schema(self) -> pa.Schema:
        return self.dataset.schema

    def batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Stream the table in batches of at most `batch_rows` rows, reading ahead a little in the background.

        Readahead is kept small (2 batches, 1 file) so that memory is bounded by the batch and row-group
        size, never by the size of the input.
        """
        options: dict[str, object] = {}
        if self.format == "parquet":
            options["fragment_scan_options"] = ds.ParquetFragmentScanOptions(pre_buffer=False)
        try:
            yield from self.dataset.to_batches(
                batch_size=batch_rows, batch_readahead=2, fragment_readahead=1, use_threads=True, **options
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise arrow_error(self.path, exc, self.format) from None


_CSV_VALUE = re.compile(r"In CSV column #(?P<column>\d+): Row #(?P<row>\d+): CSV conversion error to (?P<type>\w+)")
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
        return InputError(
            f"{where} line {value['row']}: column '{column}' must be a number (the model reads it as one), got {found}"
        )
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
    try:
        if kind == "parquet":
            dataset = ds.dataset(path, format="parquet")
            rows: int | None = _check_parquet_files(dataset, manifest) if path.is_dir() else dataset.count_rows()
        else:
            types = {spec.name: pa.float64() if spec.kind == "numeric" else pa.string() for spec in manifest.inputs}
            file_format = ds.CsvFileFormat(convert_options=pacsv.ConvertOptions(column_types=types))
            dataset = ds.dataset(path, format=file_format)
            rows = None
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise arrow_error(path, exc, kind) from None
    return InputTable(path=path, format=kind, dataset=dataset, rows=rows)

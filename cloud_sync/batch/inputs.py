"""Open a scoring input (a Parquet file, a directory of Parquet or CSV files, or a CSV file) as a
pyarrow dataset that streams record batches, with its Arrow schema and, for Parquet, its row count from
the file footers (no data read).

CSV columns the model uses are read with the type the model needs (float64 for numeric features, string
for categorical ones), so a category that looks like a number stays a category and a numeric column is not
broken by Arrow's type inference on the first block; a value that is not a number fails with a one-line
error naming the column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

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


def arrow_error(path: Path, exc: BaseException, kind: str) -> InputError:
    """One line from a pyarrow error (they can span several lines and carry C++ source locations)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^/\S+\.cc:\d+\s+", "", text)
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
            rows: int | None = dataset.count_rows()
        else:
            types = {spec.name: pa.float64() if spec.kind == "numeric" else pa.string() for spec in manifest.inputs}
            file_format = ds.CsvFileFormat(convert_options=pacsv.ConvertOptions(column_types=types))
            dataset = ds.dataset(path, format=file_format)
            rows = None
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise arrow_error(path, exc, kind) from None
    return InputTable(path=path, format=kind, dataset=dataset, rows=rows)

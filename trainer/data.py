"""Loading a training table (CSV or Parquet) and checking it before any work starts.

Every problem a user can cause is a one-line InputError or NotFoundError: a missing or unreadable file,
an empty file, an absent target, a target with one class, a column that is entirely missing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from contracts.errors import InputError, NotFoundError
from contracts.manifest import MISSING_CATEGORY

__all__ = ["TrainingData", "file_sha256", "load_training_data"]


@dataclass
class TrainingData:
    features: pd.DataFrame
    """Numeric columns as float64 (NaN = missing); categorical columns as str ("" = missing)."""
    target: pd.Series
    numeric: list[str]
    categorical: list[str]
    source: str
    sha256: str
    dropped_rows: int


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file (or a Parquet directory) into a frame, with a one-line error on failure."""
    if not path.exists():
        raise NotFoundError(f"data file {path} not found")
    suffix = path.suffix.lower()
    if path.is_dir() and not any(path.glob("*.parquet")):
        raise InputError(f"{path} is a directory without Parquet files; pass a CSV or Parquet file")
    try:
        if path.is_dir() or suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if suffix in {".csv", ".txt", ".gz"}:
            return pd.read_csv(path)
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        kind = "Parquet" if suffix in {".parquet", ".pq"} else "CSV"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} is not a readable {kind} file: {first_line}") from None
    raise InputError(f"{path}: unsupported file type '{suffix}'; use .csv or .parquet")


def load_training_data(path: Path, target: str, ignore: list[str] | None = None) -> TrainingData:
    path = Path(path)
    frame = read_table(path)
    if frame.empty or frame.shape[1] == 0:
        raise InputError(f"{path} has no rows")
    if target not in frame.columns:
        shown = ", ".join(map(str, frame.columns[:12]))
        raise InputError(f"target column '{target}' is not in {path} (columns: {shown})")
    for column in ignore or []:
        if column not in frame.columns:
            raise InputError(f"--ignore column '{column}' is not in {path}")
    frame = frame.drop(columns=list(ignore or []))
    before = len(frame)
    frame = frame[frame[target].notna()]
    dropped = before - len(frame)
    if frame.empty:
        raise InputError(f"target column '{target}' is entirely missing")
    y = frame[target]
    if y.nunique() < 2:
        raise InputError(f"target column '{target}' has a single class ({y.iloc[0]}); need at least two")
    counts = y.value_counts()
    if counts.min() < 2:
        rare = counts.idxmin()
        raise InputError(f"class {rare} of '{target}' has a single row; need at least two per class")
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise InputError(f"{path} has no feature columns besides the target '{target}'")
    numeric: list[str] = []
    categorical: list[str] = []
    columns: dict[str, pd.Series] = {}
    for column in features.columns:
        series = features[column]
        name = str(column)
        if series.isna().all():
            raise InputError(f"column '{name}' is entirely missing; drop it with --ignore {name}")
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
            numeric.append(name)
            columns[name] = series.astype("float64")
        else:
            categorical.append(name)
            columns[name] = series.map(lambda v: MISSING_CATEGORY if pd.isna(v) else str(v)).astype(object)
    if pd.api.types.is_float_dtype(y) and (y == y.round()).all():
        y = y.astype("int64")  # a CSV integer target with missing rows is read as float
    if not pd.api.types.is_integer_dtype(y):
        y = y.astype(str)
    return TrainingData(
        features=pd.DataFrame(columns, index=features.index),
        target=y,
        numeric=numeric,
        categorical=categorical,
        source=str(path.resolve()),
        sha256=file_sha256(path) if path.is_file() else "directory",
        dropped_rows=dropped,
    )

"""`edgeloop predict`: score a few rows of a CSV with a bundle and print them (a smoke test of a bundle).

Uses only the standard library's csv module and onnxruntime, so it runs on a device too.
"""

from __future__ import annotations

import csv
from pathlib import Path

from rich.console import Console
from rich.table import Table

from contracts.bundle import load_bundle
from contracts.errors import InputError, NotFoundError
from contracts.manifest import FeatureSpec
from contracts.runtime import OnnxModel
from contracts.signing import load_public_key

__all__ = ["predict_csv_rows"]

_BOOLEANS = {"true": 1.0, "false": 0.0}


def _coerce(raw: str, spec: FeatureSpec, line: int) -> float | str | None:
    if raw == "":
        return None
    if spec.kind == "categorical":
        return raw
    if raw.lower() in _BOOLEANS:
        return _BOOLEANS[raw.lower()]  # the trainer reads a bool column as a 0/1 number
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"line {line}: '{spec.name}' should be a number, got {raw!r}") from None


def _cell(value: float | str | None) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else value


def predict_csv_rows(bundle_dir: Path, data: Path, rows: int, public_key: Path | None, console: Console) -> None:
    bundle = load_bundle(bundle_dir, load_public_key(public_key) if public_key else None)
    if public_key is None:
        console.print("[dim]signature not verified (pass --public-key to check who signed this bundle)[/dim]")
    model = OnnxModel.load(bundle)
    if not data.is_file():
        raise NotFoundError(f"data file {data} not found")
    specs = bundle.manifest.inputs
    records, extras = [], []
    try:
        with data.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [spec.name for spec in specs if spec.name not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{data} lacks the model's column '{missing[0]}'")
            for line, row in enumerate(reader, start=2):
                records.append({spec.name: _coerce(row[spec.name] or "", spec, line) for spec in specs})
                extras.append(row.get(bundle.manifest.target) or "")
                if len(records) >= rows:
                    break
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{data} is not a readable UTF-8 CSV file: {exc}") from None
    if not records:
        raise InputError(f"{data} has no data rows")
    result = model.predict_records(records)
    table = Table(title=f"{bundle.manifest.name} v{bundle.manifest.version} ({model.runtime})")
    for spec in specs[:4]:
        table.add_column(spec.name)
    table.add_column("label", style="bold")
    for cls in bundle.manifest.classes:
        table.add_column(f"p({cls})", justify="right")
    table.add_column(f"actual {bundle.manifest.target}")
    for record, label, proba, actual in zip(records, result.labels, result.probabilities, extras, strict=True):
        shown = [_cell(record[s.name]) for s in specs[:4]]
        table.add_row(*shown, str(label), *[f"{p:.3f}" for p in proba], actual)
    console.print(table)

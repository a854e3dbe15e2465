"""Business impact: what each model version's predictions were worth, from the feedback confusion counts.

A cost/benefit matrix per model (YAML, `value_matrices` setting) gives the value of each (actual, predicted)
outcome; binary models may use the TP/FP/FN/TN shorthand:

    models:
      machine-failure:
        unit: EUR
        positive: 1          # the class a "positive" prediction is (binary shorthand; negative = 0)
        negative: 0
        tp: 800              # a failure caught: the repair is planned
        fp: -120             # a needless inspection
        fn: -2500            # a failure missed: unplanned downtime
        tn: 0
      other-model:
        values: {a: {a: 10, b: -5}, b: {a: -1, b: 3}}   # values[actual][predicted]

The value of a set of windows is sum(confusion[actual][predicted] * values[actual][predicted]) over the
*merged* confusion counts (never an average of per-window scores). A pair the matrix does not name is worth
0 and is listed under `unvalued`, never silently. Per labelled prediction it is comparable across versions
and periods; `estimated_value_all_records` extrapolates to every record scored (assumes the labelled ones are
representative). A deployment's impact compares the new version after its rollout started with the previous
version before it (and, during a canary, with the previous version on the rest of the group, same period).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cloud_sync.fleet.stats import WindowRecord, load_windows
from cloud_sync.store.audit import iso
from cloud_sync.store.db import Store, rollouts
from contracts.errors import InputError
from contracts.telemetry import merge_counts

__all__ = ["ValueMatrix", "impact", "load_value_matrices", "value_of"]


class ValueMatrix(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unit: str = "value"
    positive: str = "1"
    negative: str = "0"
    tp: float | None = None
    fp: float | None = None
    fn: float | None = None
    tn: float | None = None
    values: dict[str, dict[str, float]] = Field(default_factory=dict)
    """values[actual][predicted]; filled from tp/fp/fn/tn for the binary shorthand."""

    @model_validator(mode="before")
    @classmethod
    def _keys_as_text(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in ("positive", "negative"):
                if key in data and data[key] is not None:
                    data[key] = str(data[key])
            if isinstance(data.get("values"), dict):
                data["values"] = {
                    str(a): {str(p): v for p, v in row.items()} if isinstance(row, dict) else row
                    for a, row in data["values"].items()
                }
        return data

    @model_validator(mode="after")
    def _expand(self) -> ValueMatrix:
        shorthand = {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn}
        given = {key: value for key, value in shorthand.items() if value is not None}
        if given and self.values:
            raise ValueError("give either tp/fp/fn/tn or values, not both")
        if given:
            pos, neg = self.positive, self.negative
            cells = {"tp": (pos, pos), "fp": (neg, pos), "fn": (pos, neg), "tn": (neg, neg)}
            for key, value in given.items():
                actual, predicted = cells[key]
                self.values.setdefault(actual, {})[predicted] = value
        if not self.values:
            raise ValueError("a matrix needs tp/fp/fn/tn or values[actual][predicted]")
        return self


def load_value_matrices(path: Path | None) -> dict[str, ValueMatrix]:
    """`{model name: matrix}` from the YAML file (`models:` table); {} without a file."""
    if path is None:
        return {}
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read value matrices {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"value matrices {path} are not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise InputError(f"value matrices {path}: expected a `models:` table of model name -> matrix")
    matrices = {}
    for name, spec in raw["models"].items():
        try:
            matrices[str(name)] = ValueMatrix.model_validate(spec)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "".join(f".{part}" for part in first["loc"])
            raise InputError(f"value matrices {path}: models.{name}{where}: {first['msg']}") from None
    return matrices


def value_of(confusion: dict[str, dict[str, int]], matrix: ValueMatrix) -> tuple[float, int, list[str]]:
    """(total value, labelled predictions, unvalued 'actual->predicted' pairs) of merged confusion counts."""
    total, labels, unvalued = 0.0, 0, []
    for actual, row in sorted(confusion.items()):
        for predicted, count in sorted(row.items()):
            labels += count
            value = matrix.values.get(actual, {}).get(predicted)
            if value is None:
                if count:
                    unvalued.append(f"{actual}->{predicted}")
                continue
            total += count * value
    return total, labels, unvalued


def _summary(records: list[WindowRecord], matrix: ValueMatrix) -> dict[str, Any]:
    merged = merge_counts(record.counts for record in records)
    value, labels, unvalued = value_of(merged.confusion, matrix)
    per_label = value / labels if labels else None
    return {
        "windows": len(records),
        "records": merged.records,
        "labels": labels,
        "accuracy": merged.accuracy,
        "confusion": merged.confusion,
        "value": value if labels else None,
        "value_per_label": per_label,
        "estimated_value_all_records": None if per_label is None else per_label * merged.records,
        "unvalued": unvalued,
    }


def _by_version(records: list[WindowRecord], matrix: ValueMatrix) -> list[dict[str, Any]]:
    groups: dict[int | None, list[WindowRecord]] = defaultdict(list)
    for record in records:
        groups[record.model_version].append(record)
    return [{"version": version, **_summary(subset, matrix)} for version, subset in sorted(groups.items(), key=_key)]


def _key(item: tuple[int | None, Any]) -> int:
    return -1 if item[0] is None else item[0]


def impact(
    store: Store,
    model: str,
    matrix: ValueMatrix,
    start: float,
    end: float,
    period_s: float,
    group: str | None = None,
    compare_s: float = 86400.0,
) -> dict[str, Any]:
    """Value per version over (start, end], per period bucket, and the change each rollout of the model made."""
    records = [r for r in load_windows(store, start, end, group) if r.model_name == model]
    buckets: dict[int, list[WindowRecord]] = defaultdict(list)
    for record in records:
        buckets[int((record.window_end - start) // period_s)].append(record)
    periods = [
        {
            "start": iso(start + index * period_s),
            "end": iso(min(end, start + (index + 1) * period_s)),
            "versions": _by_version(subset, matrix),
        }
        for index, subset in sorted(buckets.items())
    ]
    query = sa.select(rollouts).where(
        rollouts.c.model_name == model, rollouts.c.created_at > start, rollouts.c.created_at <= end
    )
    if group:
        query = query.where(rollouts.c.group_name == group)
    with store.engine.connect() as conn:
        rows = conn.execute(query.order_by(rollouts.c.created_at)).mappings().all()
    deployments = [_deployment(store, model, matrix, dict(row), compare_s, end) for row in rows]
    return {
        "model": model,
        "group": group,
        "start": iso(start),
        "end": iso(end),
        "unit": matrix.unit,
        "matrix": matrix.values,
        "versions": _by_version(records, matrix),
        "periods": periods,
        "deployments": deployments,
    }


def _deployment(
    store: Store, model: str, matrix: ValueMatrix, row: dict[str, Any], compare_s: float, end: float
) -> dict[str, Any]:
    at, group = row["created_at"], row["group_name"]
    new, old = row["model_version"], row["previous_version"]
    before_records = [
        r for r in load_windows(store, at - compare_s, at, group) if r.model_name == model and r.model_version == old
    ]
    after_all = [r for r in load_windows(store, at, min(end, at + compare_s), group) if r.model_name == model]
    before = _summary(before_records, matrix)
    after = _summary([r for r in after_all if r.model_version == new], matrix)
    alongside = _summary([r for r in after_all if r.model_version == old], matrix)
    change = None
    if after["value_per_label"] is not None and before["value_per_label"] is not None:
        change = after["value_per_label"] - before["value_per_label"]
    return {
        "rollout_id": row["id"],
        "group": group,
        "state": row["state"],
        "created_at": iso(at),
        "version": new,
        "previous_version": old,
        "before": before,
        "after": after,
        "previous_alongside": alongside,
        "change_per_label": change,
        "change_per_1000_predictions": None if change is None else change * 1000,
        "estimated_change_after": None if change is None else change * after["records"],
    }

"""Alert rules: what a rule states (`Rule`), the defaults, and loading them from a small YAML file
(`alert_rules` setting; format in docs/cloud.md). `evaluator.py` applies them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cloud_sync.times import parse_duration
from contracts.errors import InputError

__all__ = ["DEFAULT_RULES", "Kind", "Rule", "load_rules"]

Kind = Literal[
    "accuracy_below",
    "psi_above",
    "device_offline",
    "p99_above",
    "error_rate_above",
    "rollout_failed",
    "clock_skew_above",
]


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    kind: Kind
    threshold: float = 0.0
    """accuracy / PSI / seconds of p99 / error share; for device_offline and clock_skew_above a duration (`10m`;
    clock_skew_above: 0 = the cloud setting clock_skew_limit_s)."""
    window: float = 3600.0
    """The period the telemetry is merged over, ending now (`1h`)."""
    for_: float = Field(default=0.0, alias="for")
    """How long the breach must last before the alert fires (`10m`)."""
    min_samples: int = 50
    """Fewest requests / feedback labels / records for a telemetry rule to judge."""
    scope: Literal["device", "group"] = "device"
    severity: Literal["info", "warning", "critical"] = "warning"

    @field_validator("window", "for_", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> float:
        return parse_duration(value) if isinstance(value, str) else float(value)


DEFAULT_RULES: list[dict[str, Any]] = [
    {"name": "accuracy-low", "kind": "accuracy_below", "threshold": 0.75, "window": "1h", "for": "10m"},
    {"name": "feature-drift", "kind": "psi_above", "threshold": 0.25, "window": "1h", "min_samples": 100},
    {"name": "device-offline", "kind": "device_offline", "threshold": "10m", "severity": "critical"},
    {"name": "latency-p99-high", "kind": "p99_above", "threshold": 0.25, "window": "15m", "for": "5m"},
    {"name": "error-rate-high", "kind": "error_rate_above", "threshold": 0.05, "window": "15m", "for": "5m"},
    {"name": "rollout-failed", "kind": "rollout_failed", "window": "24h", "severity": "critical"},
    {"name": "clock-skew", "kind": "clock_skew_above", "window": "1h"},
]


def load_rules(path: Path | None) -> list[Rule]:
    """The rules of a YAML file (`rules: [...]`), or the defaults."""
    raw: Any = DEFAULT_RULES
    if path is not None:
        try:
            raw = (yaml.safe_load(Path(path).read_text()) or {}).get("rules")
        except (OSError, yaml.YAMLError, AttributeError) as exc:
            raise InputError(f"alert rules {path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, list):
            raise InputError(f"alert rules {path}: expected a top-level `rules:` list")
    rules = []
    for index, item in enumerate(raw):
        try:
            rules.append(Rule.model_validate(item))
        except (ValidationError, ValueError) as exc:
            detail = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
            where = ".".join(str(part) for part in detail["loc"])
            raise InputError(f"alert rule {index + 1} ({where}): {detail['msg']}") from None
    names = [rule.name for rule in rules]
    if len(set(names)) != len(names):
        raise InputError("alert rule names must be unique")
    return rules

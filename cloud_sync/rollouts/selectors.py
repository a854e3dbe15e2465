"""Label selectors: which devices of a group a rollout targets, and a canary that represents every label value.

Kubernetes' equality- and set-based grammar, so operators recognise it; requirements are ANDed:

    site=graz,hw=pi4          site is graz and hw is pi4 (`==` works too)
    hw!=pi3                   hw is not pi3 (devices without an hw label match, as in Kubernetes)
    hw in (pi4,pi5)           hw is one of them;  `hw notin (pi3)` the opposite (unlabelled devices match)
    gpu   /   !gpu            the label exists / does not exist

Keys and values follow `contracts.labels`. A device's labels come from its reported state (agent setting
`labels`). `Rollouts.deploy` narrows the group to `members(...)` before choosing the canary; a selector
rollout's promotion publishes device-level desired states to the matching devices instead of the group topic
(docs/cloud.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from contracts.errors import InputError
from contracts.labels import check_label

__all__ = ["Requirement", "Selector", "members", "with_each_label"]

Op = Literal["=", "!=", "in", "notin", "exists", "!exists"]
_SET = re.compile(r"^([^\s!=()]+)\s+(in|notin)\s*\(([^()]*)\)$")


@dataclass(frozen=True)
class Requirement:
    """One condition on one label key."""

    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        if self.op in ("=", "in"):
            return value is not None and value in self.values
        return value is None or value not in self.values  # != and notin

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return f"!{self.key}"
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        return f"{self.key} {self.op} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    """Requirements that must all hold; `Selector.parse("site=graz,hw!=pi3")`."""

    requirements: tuple[Requirement, ...]

    @classmethod
    def parse(cls, text: str) -> Selector:
        """InputError (one line, naming the bad part) for anything outside the grammar above."""
        parts = [part.strip() for part in _split(text)]
        if not any(parts):
            raise InputError("--selector is empty: give key=value pairs, e.g. site=graz,hw=pi4")
        try:
            return cls(tuple(_requirement(part) for part in parts))
        except ValueError as exc:
            raise InputError(f"--selector {text!r}: {exc}") from None

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(requirement.matches(labels) for requirement in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses (`hw in (pi4,pi5),site=graz` is two requirements)."""
    parts: list[str] = []
    depth, current = 0, list[str]()
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _requirement(part: str) -> Requirement:
    if not part:
        raise ValueError("an empty requirement between commas")
    found = _SET.match(part)
    if found:
        key, op, listed = found.groups()
        values = tuple(check_label(key, value)[1] for value in listed.split(",") if value.strip())
        if not values:
            raise ValueError(f"{part!r} lists no value")
        return Requirement(check_label(key, "")[0], "in" if op == "in" else "notin", values)
    for op in ("!=", "==", "="):
        if op in part:
            key, _, value = part.partition(op)
            key, value = check_label(key, value)
            return Requirement(key, "!=" if op == "!=" else "=", (value,))
    if part.startswith("!"):
        return Requirement(check_label(part[1:], "")[0], "!exists")
    if " " in part or "(" in part:
        raise ValueError(f"{part!r} is not key=value, key!=value, key in (a,b), key notin (a,b), key or !key")
    return Requirement(check_label(part, "")[0], "exists")


def members(devices: Iterable[Mapping[str, Any]], selector: str | None) -> dict[str, dict[str, str]]:
    """Device id -> labels of the devices (rows of `fleet.stats.device_list`) that match; all of them when
    `selector` is None."""
    chosen = Selector.parse(selector) if selector else None
    return {
        device["device_id"]: device.get("labels") or {}
        for device in devices
        if chosen is None or chosen.matches(device.get("labels"))
    }


def with_each_label(canary: list[str], devices: Mapping[str, Mapping[str, str]], key: str | None) -> list[str]:
    """`canary` plus, for every value of label `key` among `devices` that no canary device has, the first such
    device (by id); devices without the label count as one more class. Unchanged when `key` is None."""
    if not key:
        return canary
    if not canary:
        raise InputError(f"--canary-per-label {key} needs a canary (--canary 0 leaves none)")
    covered = {devices[name].get(key) for name in canary if name in devices}
    chosen = list(canary)
    for name in sorted(devices):
        value = devices[name].get(key)
        if value not in covered:
            covered.add(value)
            chosen.append(name)
    return chosen

"""Device labels: `key=value` pairs a device reports (hardware class, site, firmware ...) and rollouts select on.

One grammar for the agent's setting (`EDGELOOP_AGENT_LABELS="site=graz,hw=pi4"`), the reported state and the
cloud's selectors (`cloud_sync.rollouts.selectors`): a key is 1-63 characters of letters, digits, `_ . - /`
starting with a letter or digit; a value is 0-63 characters of letters, digits, `_ . -` (Kubernetes' label shape,
so operators recognise it, and safe in a query string).

>>> parse_labels("site=graz, hw=pi4")
{'site': 'graz', 'hw': 'pi4'}
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["MAX_LABELS", "check_label", "check_labels", "format_labels", "parse_labels"]

MAX_LABELS = 32
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,62}")
_VALUE = re.compile(r"[A-Za-z0-9_.-]{0,63}")


def check_label(key: str, value: str) -> tuple[str, str]:
    """The pair, stripped; ValueError naming what is wrong with it."""
    key, value = key.strip(), value.strip()
    if not _KEY.fullmatch(key):
        raise ValueError(f"label key {key!r}: 1-63 letters, digits, '_', '.', '-', '/', from a letter or digit")
    if not _VALUE.fullmatch(value):
        raise ValueError(f"label {key}={value!r}: a value is at most 63 letters, digits, '_', '.', '-'")
    return key, value


def check_labels(labels: Mapping[str, object]) -> dict[str, str]:
    """Every pair checked (values as strings); ValueError on the first bad one or past MAX_LABELS."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels: at most {MAX_LABELS}")
    return dict(check_label(str(key), str(value)) for key, value in labels.items())


def parse_labels(text: str) -> dict[str, str]:
    """`k=v,k=v` (spaces around pairs allowed; empty text = no labels); ValueError on a malformed pair."""
    labels: dict[str, str] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"label {part!r} is not key=value (e.g. site=graz,hw=pi4)")
        key, value = check_label(key, value)
        labels[key] = value
    return check_labels(labels)


def format_labels(labels: Mapping[str, str]) -> str:
    """The inverse of parse_labels, keys sorted: `hw=pi4,site=graz`."""
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels))

"""A/B traffic split: which arm (champion or challenger) answers a request key.

The key is hashed with BLAKE2b (8-byte digest) into [0, 1); below the split's `fraction` the challenger
answers. The hash is stable across processes, restarts, devices and Python versions (never Python's
`hash()`, which is salted per process), so a key always gets the same arm wherever it is served, and raising
the fraction only moves keys from the champion to the challenger, never back.

    arm_of("machine-42", 0.2)  # "champion" or "challenger", the same everywhere
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson

__all__ = ["ARMS", "Arm", "arm_of", "bucket", "key_text"]

Arm = Literal["champion", "challenger"]
ARMS: tuple[Arm, Arm] = ("champion", "challenger")
_SCALE = float(2**53)


def key_text(value: Any) -> str | None:
    """A request key as text: strings as they are, other JSON values as their compact JSON text (7 -> "7");
    a whole-number float as the integer it is (7.0 -> "7", so an id sent as 7 or 7.0 gets the same arm);
    None or "" = no key."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return orjson.dumps(value).decode()


def bucket(key: str) -> float:
    """The key's place in [0, 1): the top 53 bits of BLAKE2b-64(utf-8 key), big-endian, over 2**53 (exact in
    a float64, so the result is never 1.0)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / _SCALE


def arm_of(key: str | None, fraction: float) -> Arm:
    """The arm that answers `key`; no key -> the champion."""
    if key is None or fraction <= 0.0:
        return "champion"
    return "challenger" if bucket(key) < fraction else "champion"

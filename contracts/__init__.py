"""The wire contract shared by every edgeloop component: bundle manifest, signing, MQTT topics and messages.

Depends on numpy, pydantic, orjson, cryptography and the standard library only (plus Starlette in problem.py,
the REST error body), so the edge agent can import it without pulling anything heavy.
"""

from __future__ import annotations

from contracts.bundle import Bundle, atomic_directory, load_bundle, parse_manifest
from contracts.errors import (
    ConversionError,
    EdgeloopError,
    InputError,
    IntegrityError,
    ModelRejected,
    NotFoundError,
    ParityCheckFailed,
    SchemaError,
    ServiceUnavailableError,
    UnsupportedModelError,
)
from contracts.manifest import Manifest, canonical_bytes

__all__ = [
    "Bundle",
    "ConversionError",
    "EdgeloopError",
    "InputError",
    "IntegrityError",
    "Manifest",
    "ModelRejected",
    "NotFoundError",
    "ParityCheckFailed",
    "SchemaError",
    "ServiceUnavailableError",
    "UnsupportedModelError",
    "atomic_directory",
    "canonical_bytes",
    "load_bundle",
    "parse_manifest",
]

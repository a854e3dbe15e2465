"""The keys this device trusts to sign bundles, persisted in its state dir so a rotation survives a restart.

    state_dir/trusted-keys.json   {"seq": 2, "keys": [...], "retired": [...], "bootstrap": "<key id>"}

The set starts as the configured public key (`public_key` setting, seq 0) and changes only through a signed
key-set announcement (`contracts.keyset.accept_key_set`: signed by a key trusted now, a higher seq). When
the configured key changes (the device was re-provisioned), the configured key wins and the stored set is
reset. Keys that left the set are kept as `retired`: a bundle already verified and installed while its key was
trusted still loads at a restart (`installed()`), while every update must verify against `current()`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import orjson
from pydantic import BaseModel, ValidationError

from contracts.keyset import KeySetMessage, TrustedKey, accept_key_set
from contracts.logs import log_event
from contracts.signing import KeySet, PublicKey, key_id
from edge_agent.store import write_atomic

__all__ = ["TRUST_FILE", "TrustedKeys"]

logger = logging.getLogger("edgeloop.agent.trust")
TRUST_FILE = "trusted-keys.json"


class _Stored(BaseModel):
    seq: int
    keys: list[TrustedKey]
    retired: list[TrustedKey] = []
    bootstrap: str


class TrustedKeys:
    """The live trusted key set of one agent; thread-safe (MQTT thread writes, update worker reads)."""

    def __init__(self, state_dir: Path, configured: PublicKey) -> None:
        self.path = Path(state_dir) / TRUST_FILE
        self._lock = threading.Lock()
        self._state = self._load(configured)

    def _load(self, configured: PublicKey) -> _Stored:
        bootstrap = key_id(configured)
        fresh = _Stored(seq=0, keys=[TrustedKey.of(configured)], bootstrap=bootstrap)
        try:
            stored = _Stored.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return fresh
        except (ValidationError, ValueError) as exc:
            log_event(logger, "trusted key file unreadable, starting from the configured key", level=logging.ERROR,
                      path=str(self.path), error=str(exc).splitlines()[0])  # fmt: skip
            return fresh
        if stored.bootstrap != bootstrap:
            log_event(logger, "configured public key changed: trusted key set reset to it", level=logging.WARNING,
                      configured=bootstrap, was=",".join(k.key_id for k in stored.keys))  # fmt: skip
            return fresh
        return stored

    def current(self) -> KeySet:
        """What updates must be signed by."""
        with self._lock:
            return KeySet(tuple(entry.key() for entry in self._state.keys))

    def installed(self) -> KeySet:
        """What a bundle already in the store may be signed by: the current keys and the retired ones."""
        with self._lock:
            return KeySet(tuple(entry.key() for entry in [*self._state.keys, *self._state.retired]))

    @property
    def seq(self) -> int:
        with self._lock:
            return self._state.seq

    @property
    def ids(self) -> list[str]:
        with self._lock:
            return [entry.key_id for entry in self._state.keys]

    def apply(self, message: KeySetMessage) -> bool:
        """Trust the announced set; False when it is the set already held. IntegrityError when refused."""
        with self._lock:
            trusted = KeySet(tuple(entry.key() for entry in self._state.keys))
            accepted = accept_key_set(message, trusted, self._state.seq)
            if accepted is None:
                return False
            keys, seq = accepted
            kept = {key_id(key) for key in keys.keys}
            retired = {e.key_id: e for e in [*self._state.retired, *self._state.keys] if e.key_id not in kept}
            self._state = _Stored(
                seq=seq,
                keys=[TrustedKey.of(key) for key in keys.keys],
                retired=list(retired.values()),
                bootstrap=self._state.bootstrap,
            )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, orjson.dumps(self._state.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
        log_event(logger, "trusted key set changed", seq=seq, keys=",".join(sorted(kept)),
                  retired=",".join(sorted(retired)) or None)  # fmt: skip
        return True

    def refused(self, reason: str) -> None:
        log_event(logger, "key set refused", level=logging.ERROR, reason=reason, trusted=",".join(self.ids),
                  seq=self.seq)  # fmt: skip

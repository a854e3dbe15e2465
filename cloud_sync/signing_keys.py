"""Signing key rotation on a live fleet: the cloud's key directory, the signed key set it publishes, retirement.

    keys_dir/
      edgeloop-signing.key, .pub     the current pair: `edgeloop convert` and rollback manifests sign with it
      trusted/{key_id}.pub           every key of the published set (the bundle registry verifies against them)
      retired/{key_id}.key           a private key after its rotation (0600; shred it once retired)
      keyset.json                    the last key set published (re-published retained at every start)

`rotate`: a new pair becomes current and the set [old, new], signed by the old key, is published retained on
`edgeloop/v1/keys` (the overlap: bundles signed by either key verify on devices and in the registry).
`retire`: the set [current], signed by the current key and carrying the announcement as `previous`, is published;
devices refuse the old key from then on. Each step is in the audit log (`keys rotate`, `keys retire`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from cloud_sync.store import audit
from cloud_sync.store.bundles import BundleRegistry
from cloud_sync.store.db import Store
from contracts.errors import ConflictError, NotFoundError
from contracts.keyset import KEYS_TOPIC, KeySetMessage, sign_key_set
from contracts.logs import log_event
from contracts.signing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    TRUSTED_DIR,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    public_key_of,
    signer_key_id,
    trusted_keys,
)

__all__ = ["KEYSET_FILE", "KeyRotation", "KeyStatus"]

logger = logging.getLogger("edgeloop.cloud.keys")
KEYSET_FILE = "keyset.json"
RETIRED_DIR = "retired"


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes | str, retain: bool = True, timeout: float = 10.0) -> None: ...


@dataclass(frozen=True)
class KeyStatus:
    """What `GET /v1/keys` answers: the current signing key, the trusted set and the bundles each key signed."""

    current: str
    trusted: list[str]
    seq: int
    overlap: bool
    """True between a rotation and the retirement of the old key."""
    bundles_by_key: dict[str, list[str]]
    """Key id -> the registry's bundles (NAME/VERSION) signed by it (a retired key's bundles no longer deploy)."""


class KeyRotation:
    """Rotates and retires the signing key in `keys_dir` and publishes the key set devices trust."""

    def __init__(self, keys_dir: Path, store: Store, registry: BundleRegistry, publisher: Publisher) -> None:
        self.keys_dir = Path(keys_dir)
        self.store = store
        self.registry = registry
        self.publisher = publisher
        self._lock = threading.Lock()

    # -- reading ------------------------------------------------------------------------------------
    def last_published(self) -> KeySetMessage | None:
        path = self.keys_dir / KEYSET_FILE
        return KeySetMessage.model_validate_json(path.read_bytes()) if path.is_file() else None

    def status(self) -> KeyStatus:
        keys = trusted_keys(self.keys_dir)
        if keys is None:
            raise NotFoundError(f"no signing key in {self.keys_dir}; create one with `edgeloop keys generate`")
        current = key_id(load_public_key(self.keys_dir / PUBLIC_KEY_FILE))
        by_key: dict[str, list[str]] = {}
        for info in self.registry.all():
            signer = signer_key_id(info.signature.encode()) or "unknown"
            by_key.setdefault(signer, []).append(f"{info.name}/{info.version}")
        last = self.last_published()
        return KeyStatus(current, list(keys.ids), last.seq if last else 0, len(keys.keys) > 1, by_key)

    # -- acting -------------------------------------------------------------------------------------
    def rotate(self, actor: str, reason: str | None = None) -> KeySetMessage:
        """A new current key; the set [old, new] signed by the old key is published (the overlap starts)."""
        with self._lock:
            keys = trusted_keys(self.keys_dir)
            if keys is None:
                raise NotFoundError(f"no signing key in {self.keys_dir}; create one with `edgeloop keys generate`")
            if len(keys.keys) > 1:
                raise ConflictError(
                    f"a rotation is already under way (trusted: {', '.join(keys.ids)}); "
                    "retire the old key first with `edgeloop keys retire`"
                )
            old_private = load_private_key(self.keys_dir / PRIVATE_KEY_FILE)
            old = public_key_of(old_private)
            staging = self.keys_dir / ".rotating"
            generate_keypair(staging, overwrite=True)
            new = load_public_key(staging / PUBLIC_KEY_FILE)
            last = self.last_published()
            message = sign_key_set((last.seq if last else 0) + 1, [old, new], old_private, audit.iso(time.time()) or "")
            trusted = self.keys_dir / TRUSTED_DIR
            trusted.mkdir(exist_ok=True)
            retired = self.keys_dir / RETIRED_DIR
            retired.mkdir(mode=0o700, exist_ok=True)
            (trusted / f"{key_id(old)}.pub").write_bytes((self.keys_dir / PUBLIC_KEY_FILE).read_bytes())
            (trusted / f"{key_id(new)}.pub").write_bytes((staging / PUBLIC_KEY_FILE).read_bytes())
            self._write_keyset(message)
            os.replace(self.keys_dir / PRIVATE_KEY_FILE, retired / f"{key_id(old)}.key")
            os.replace(staging / PRIVATE_KEY_FILE, self.keys_dir / PRIVATE_KEY_FILE)
            os.replace(staging / PUBLIC_KEY_FILE, self.keys_dir / PUBLIC_KEY_FILE)
            staging.rmdir()
            self._announce(message, actor, "keys rotate", reason, {"old": key_id(old), "new": key_id(new)})
            return message

    def retire(self, actor: str, reason: str | None = None) -> KeySetMessage:
        """The set [current] signed by the current key is published: devices refuse the old key from now on."""
        with self._lock:
            keys = trusted_keys(self.keys_dir)
            last = self.last_published()
            if keys is None or len(keys.keys) < 2 or last is None:
                raise ConflictError(
                    "no rotation under way: only one key is trusted; rotate first (`edgeloop keys rotate`)"
                )
            private = load_private_key(self.keys_dir / PRIVATE_KEY_FILE)
            current = public_key_of(private)
            message = sign_key_set(last.seq + 1, [current], private, audit.iso(time.time()) or "", previous=last)
            self._write_keyset(message)
            retired = [k for k in keys.ids if k != key_id(current)]
            for old in retired:
                (self.keys_dir / TRUSTED_DIR / f"{old}.pub").unlink(missing_ok=True)
            self._announce(message, actor, "keys retire", reason, {"retired": retired, "current": key_id(current)})
            return message

    def republish(self) -> None:
        """Publish the last key set again (retained): a broker that lost its retained messages gets it back."""
        message = self.last_published()
        if message is not None:
            self.publisher.publish(KEYS_TOPIC, message.model_dump_json(), retain=True)
            log_event(logger, "key set republished", seq=message.seq, keys=",".join(k.key_id for k in message.keys))

    # -- internals ----------------------------------------------------------------------------------
    def _write_keyset(self, message: KeySetMessage) -> None:
        path = self.keys_dir / KEYSET_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(message.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)

    def _announce(
        self, message: KeySetMessage, actor: str, action: str, reason: str | None, details: dict[str, Any]
    ) -> None:
        self.publisher.publish(KEYS_TOPIC, message.model_dump_json(), retain=True)
        with self.store.engine.begin() as conn:
            audit.record(conn, actor, action, target="keys", reason=reason, details={**details, "seq": message.seq})
        log_event(logger, "key set published", action=action, seq=message.seq, **details)

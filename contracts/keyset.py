"""The signed key-set announcement of a key rotation (contract v1), and the rule a device applies to it.

The cloud publishes the whole set of public keys devices must trust, retained, on `edgeloop/v1/keys`:

    rotate:  seq 1, keys [old, new], signed by old     (the overlap: bundles signed by either key verify)
    retire:  seq 2, keys [new],      signed by new     (carries seq 1 as `previous`)

A device accepts a set only when it is signed by a key it already trusts and its `seq` is higher than the one
it holds (a replayed older announcement is refused; the same one again, as the broker re-delivers a retained
message on every connection, changes nothing). The signer must stay in the set it signs. A device that missed
the announcement (offline during the overlap) follows `previous`: the retirement carries the announcement it
supersedes, so the chain old -> new is checked link by link. One link back only: a device that missed two
rotations is re-provisioned with the current public key (docs/edge-agent.md "Key rotation").
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from contracts.errors import IntegrityError
from contracts.signing import KeySet, PublicKey, key_id, public_key_of

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["KEYS_TOPIC", "KeySetMessage", "TrustedKey", "accept_key_set", "sign_key_set", "signed_bytes"]

KEYS_TOPIC = "edgeloop/v1/keys"


class TrustedKey(BaseModel):
    model_config = ConfigDict(extra="ignore")
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    """First 16 hex digits of the sha256 of the raw public key (as in manifest.sig)."""
    public_key: str
    """The raw 32-byte Ed25519 public key, base64."""

    @classmethod
    def of(cls, key: PublicKey) -> TrustedKey:
        return cls(key_id=key_id(key), public_key=base64.b64encode(key.raw).decode("ascii"))

    def key(self) -> PublicKey:
        """The public key; IntegrityError when it is not 32 bytes of base64 or does not match `key_id`."""
        try:
            raw = base64.b64decode(self.public_key, validate=True)
        except (binascii.Error, ValueError):
            raise IntegrityError(f"key {self.key_id} in the key set is not base64") from None
        key = PublicKey(raw)
        if len(raw) != 32 or key_id(key) != self.key_id:
            raise IntegrityError(f"key {self.key_id} in the key set does not match its id")
        return key


class KeySetMessage(BaseModel):
    """The set of public keys devices trust, signed by one of the keys they trusted before."""

    model_config = ConfigDict(extra="ignore")
    schema_version: Literal["v1"] = "v1"
    seq: int = Field(ge=1)
    """Grows by one per rotation or retirement; a device refuses a set whose seq is lower than its own."""
    keys: list[TrustedKey] = Field(min_length=1, max_length=8)
    """Every key trusted from now on (two during an overlap, one after the old key is retired)."""
    signer: str = Field(pattern=r"^[0-9a-f]{16}$")
    """Key id of the key that signed this message (one devices already trust; it is in `keys`)."""
    issued_at: str
    signature: str
    """Ed25519 signature (base64) over `signed_bytes(message)`: seq, keys, signer and issued_at."""
    previous: KeySetMessage | None = None
    """The message this one supersedes (without its own `previous`), for devices that missed it."""

    def key_set(self) -> KeySet:
        return KeySet(tuple(entry.key() for entry in self.keys))


def signed_bytes(message: KeySetMessage) -> bytes:
    """What the signature covers: compact JSON with sorted keys of seq, keys, signer and issued_at."""
    body = message.model_dump(mode="json", include={"schema_version", "seq", "keys", "signer", "issued_at"})
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign_key_set(
    seq: int,
    keys: list[PublicKey],
    private_key: Ed25519PrivateKey,
    issued_at: str,
    previous: KeySetMessage | None = None,
) -> KeySetMessage:
    """The key set `keys` under `seq`, signed by `private_key` (whose public half must be in `keys`)."""
    message = KeySetMessage(
        seq=seq,
        keys=[TrustedKey.of(key) for key in keys],
        signer=key_id(public_key_of(private_key)),
        issued_at=issued_at,
        signature="",
        previous=previous.model_copy(update={"previous": None}) if previous is not None else None,
    )
    message.signature = base64.b64encode(private_key.sign(signed_bytes(message))).decode("ascii")
    return message


def _verify(message: KeySetMessage, trusted: KeySet) -> KeySet:
    signer = trusted.find(message.signer)
    if signer is None:
        raise IntegrityError(
            f"key set {message.seq} is signed by key {message.signer}, which this device does not trust "
            f"(trusted: {', '.join(trusted.ids)}): refused"
        )
    if message.signer not in {entry.key_id for entry in message.keys}:
        raise IntegrityError(f"key set {message.seq}: its signer {message.signer} is not in the set it signs")
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        VerifyKey(signer.raw).verify(signed_bytes(message), base64.b64decode(message.signature, validate=True))
    except (BadSignatureError, ValueError, binascii.Error):
        raise IntegrityError(f"key set {message.seq}: the signature by key {message.signer} is invalid") from None
    return message.key_set()


def accept_key_set(message: KeySetMessage, trusted: KeySet, seq: int) -> tuple[KeySet, int] | None:
    """The set and seq to trust from now on, or None when `message` is the set already held (a re-delivery).

    Raises IntegrityError (refused) for an older seq (replay), a signer not trusted (after following
    `previous` one link), a signer outside its own set, a bad signature, or a key that does not match its id.
    """
    if message.seq < seq:
        raise IntegrityError(f"key set {message.seq} is older than the one held ({seq}): refused as a replay")
    if message.seq == seq:
        if set(message.key_set().ids) == set(trusted.ids):
            return None
        raise IntegrityError(f"key set {message.seq} differs from the one held under the same seq: refused")
    if trusted.find(message.signer) is None and message.previous is not None and message.previous.seq > seq:
        trusted, seq = _verify(message.previous, trusted), message.previous.seq
        if message.seq <= seq:
            raise IntegrityError(f"key set {message.seq} does not follow its previous one ({seq}): refused")
    return _verify(message, trusted), message.seq

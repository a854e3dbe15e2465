"""Ed25519 signing and verification of bundle manifests.

The private key stays where the converter runs (never in a bundle); devices hold only the public key.
`manifest.sig` is a small JSON document: algorithm, key id (first 16 hex digits of the sha256 of the raw
public key) and the base64 signature over `canonical_bytes(manifest)`.

Signing (key generation, `sign_bytes`) uses `cryptography`, imported where it is needed: it is the signer's
library. Verification, all a device does, reads the PEM public key itself (an Ed25519 SubjectPublicKeyInfo is a
fixed 12-byte prefix plus the 32-byte key) and checks signatures with PyNaCl (libsodium): the agent never loads
cryptography's OpenSSL bindings (about 12 MB of RSS against 3.5 MB; docs/edge-agent.md). `verify_bytes` and
`key_id` also take a cryptography public key, as the converter holds one.

A signer may trust several keys at once (`KeySet`: during a key rotation's overlap, docs/edge-agent.md "Key
rotation"); `verify_bytes` with a set picks the key the signature document names and refuses a key not in it.
The cloud's trusted set lives in `keys_dir/trusted/*.pub` beside the current pair (`trusted_keys`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from contracts.errors import InputError, IntegrityError, NotFoundError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "TRUSTED_DIR",
    "KeySet",
    "PublicKey",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_key_of",
    "sign_bytes",
    "signer_key_id",
    "trusted_keys",
    "verify_bytes",
]

PRIVATE_KEY_FILE = "edgeloop-signing.key"
PUBLIC_KEY_FILE = "edgeloop-signing.pub"
TRUSTED_DIR = "trusted"
"""`keys_dir/trusted/{key_id}.pub`: every public key of the signer's published key set (key rotation)."""
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
"""DER of an Ed25519 SubjectPublicKeyInfo up to its 32 key bytes (RFC 8410)."""


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key as its 32 raw bytes (what a device holds and verifies with)."""

    raw: bytes

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        """Parse a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) holding an Ed25519 key; ValueError otherwise."""
        text = data.decode("ascii", errors="strict").strip()
        header, footer = "-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"
        if not (text.startswith(header) and text.endswith(footer)):
            raise ValueError("no PEM PUBLIC KEY block")
        try:
            der = base64.b64decode("".join(text[len(header) : -len(footer)].split()), validate=True)
        except binascii.Error:
            raise ValueError("the PEM body is not base64") from None
        if len(der) != len(_SPKI_PREFIX) + 32 or not der.startswith(_SPKI_PREFIX):
            raise ValueError("not an Ed25519 key")
        return cls(der[len(_SPKI_PREFIX) :])


@dataclass(frozen=True)
class KeySet:
    """The public keys a verifier trusts at once (one, or two during a key rotation's overlap)."""

    keys: tuple[PublicKey, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(key_id(key) for key in self.keys)

    def find(self, wanted: str) -> PublicKey | None:
        return next((key for key in self.keys if key_id(key) == wanted), None)


def _raw(public_key: PublicKey | Ed25519PublicKey) -> bytes:
    if isinstance(public_key, PublicKey):
        return public_key.raw
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_keypair(directory: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new key pair into `directory` (private key mode 0600); returns (private, public) paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    if private_path.exists() and not overwrite:
        raise InputError(f"{private_path} already exists; pass --overwrite to replace it")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tmp = private_path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    os.replace(tmp, private_path)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not path.is_file():
        raise NotFoundError(f"signing key {path} not found; create one with `edgeloop keys generate`")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise InputError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> PublicKey:
    if not path.is_file():
        raise NotFoundError(f"public key {path} not found; copy edgeloop-signing.pub from the signer")
    try:
        return PublicKey.from_pem(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not an Ed25519 PEM public key ({exc}); copy edgeloop-signing.pub") from None


def public_key_of(private_key: Ed25519PrivateKey) -> PublicKey:
    """The public half of a signer's key, as devices hold it."""
    return PublicKey(_raw(private_key.public_key()))


def key_id(public_key: PublicKey | Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw(public_key)).hexdigest()[:16]


def trusted_keys(keys_dir: Path) -> KeySet | None:
    """The signer's trusted set: the current public key plus `keys_dir/trusted/*.pub`; None when it has no key."""
    paths = [keys_dir / PUBLIC_KEY_FILE, *sorted((keys_dir / TRUSTED_DIR).glob("*.pub"))]
    keys: dict[str, PublicKey] = {}
    for path in paths:
        if path.is_file():
            key = load_public_key(path)
            keys.setdefault(key_id(key), key)
    return KeySet(tuple(keys.values())) if keys else None


def signer_key_id(signature_document: bytes) -> str | None:
    """The key id a `manifest.sig` document names, or None when it is malformed."""
    try:
        document = orjson.loads(signature_document)
    except orjson.JSONDecodeError:
        return None
    signer = document.get("key_id") if isinstance(document, dict) else None
    return signer if isinstance(signer, str) else None


def sign_bytes(data: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """Return the content of a `manifest.sig` document for `data`."""
    signature = private_key.sign(data)
    document = {
        "algorithm": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def verify_bytes(data: bytes, signature_document: bytes, public_key: PublicKey | Ed25519PublicKey | KeySet) -> None:
    """Raise IntegrityError unless `signature_document` is a valid signature of `data` by `public_key` (by the
    key of the set that the document names, for a `KeySet`)."""
    if isinstance(public_key, KeySet):
        signer = signer_key_id(signature_document)
        chosen = public_key.find(signer) if signer else None
        if chosen is None:
            raise IntegrityError(
                f"manifest signature is invalid for the trusted keys ({', '.join(public_key.ids)}): it was signed by "
                f"key {signer} (another key, not trusted here); sign with a current key, or announce the new key "
                "with `edgeloop keys rotate`"
            )
        public_key = chosen
    try:
        document = orjson.loads(signature_document)
        if document.get("algorithm") != "ed25519":
            raise IntegrityError(f"unsupported signature algorithm {document.get('algorithm')!r}")
        signature = base64.b64decode(document["signature"], validate=True)
    except (orjson.JSONDecodeError, KeyError, ValueError, AttributeError):
        raise IntegrityError("signature document is malformed; the bundle must be re-signed") from None
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        VerifyKey(_raw(public_key)).verify(data, signature)
    except (BadSignatureError, ValueError):  # ValueError: a signature of the wrong length
        expected, signer = key_id(public_key), document.get("key_id")
        if signer == expected:
            raise IntegrityError(
                f"manifest signature is invalid for key {expected}: the manifest was altered after signing"
            ) from None
        raise IntegrityError(
            f"manifest signature is invalid for key {expected}: it was signed by key {signer} (another key) "
            "or the bundle was altered"
        ) from None

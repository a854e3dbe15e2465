"""Ed25519 signing and verification of bundle manifests.

The private key stays where the converter runs (never in a bundle); devices hold only the public key.
`manifest.sig` is a small JSON document: algorithm, key id (first 16 hex digits of the sha256 of the raw
public key) and the base64 signature over `canonical_bytes(manifest)`.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contracts.errors import InputError, IntegrityError, NotFoundError

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign_bytes",
    "verify_bytes",
]

PRIVATE_KEY_FILE = "edgeloop-signing.key"
PUBLIC_KEY_FILE = "edgeloop-signing.pub"


def generate_keypair(directory: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new key pair into `directory` (private key mode 0600); returns (private, public) paths."""
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
    if not path.is_file():
        raise NotFoundError(f"signing key {path} not found; create one with `edgeloop keys generate`")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise InputError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    if not path.is_file():
        raise NotFoundError(f"public key {path} not found; copy edgeloop-signing.pub from the signer")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise InputError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path} is not an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_bytes(data: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """Return the content of a `manifest.sig` document for `data`."""
    signature = private_key.sign(data)
    document = {
        "algorithm": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def verify_bytes(data: bytes, signature_document: bytes, public_key: Ed25519PublicKey) -> None:
    """Raise IntegrityError unless `signature_document` is a valid signature of `data` by `public_key`."""
    try:
        document = orjson.loads(signature_document)
        if document.get("algorithm") != "ed25519":
            raise IntegrityError(f"unsupported signature algorithm {document.get('algorithm')!r}")
        signature = base64.b64decode(document["signature"], validate=True)
    except (orjson.JSONDecodeError, KeyError, ValueError, AttributeError):
        raise IntegrityError("signature document is malformed; the bundle must be re-signed") from None
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        expected, signer = key_id(public_key), document.get("key_id")
        if signer == expected:
            raise IntegrityError(
                f"manifest signature is invalid for key {expected}: the manifest was altered after signing"
            ) from None
        raise IntegrityError(
            f"manifest signature is invalid for key {expected}: it was signed by key {signer} (another key) "
            "or the bundle was altered"
        ) from None

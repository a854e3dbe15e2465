"""The key-set announcement's rule (contracts/keyset.py) and the agent's persisted trusted set (edge_agent/trust.py),
on real Ed25519 keys: what a device accepts, what it refuses, and what survives a restart."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts.errors import IntegrityError
from contracts.keyset import KeySetMessage, TrustedKey, accept_key_set, sign_key_set, signed_bytes
from contracts.signing import KeySet, key_id, public_key_of, sign_bytes, verify_bytes
from edge_agent.trust import TrustedKeys

AT = "2026-01-01T00:00:00Z"


def _pair() -> tuple[Ed25519PrivateKey, KeySet]:
    private = Ed25519PrivateKey.generate()
    return private, KeySet((public_key_of(private),))


def test_a_rotation_then_a_retirement_are_accepted_in_order_and_replays_refused() -> None:
    old_private, old = _pair()
    new_private, new = _pair()
    announce = sign_key_set(1, [*old.keys, *new.keys], old_private, AT)
    trusted, seq = accept_key_set(announce, old, 0) or (old, 0)
    assert set(trusted.ids) == {*old.ids, *new.ids} and seq == 1
    assert accept_key_set(announce, trusted, 1) is None  # the broker re-delivers the retained set: no change
    retire = sign_key_set(2, list(new.keys), new_private, AT, previous=announce)
    after = accept_key_set(retire, trusted, 1)
    assert after is not None and after[0].ids == new.ids and after[1] == 2
    with pytest.raises(IntegrityError, match="older than the one held"):
        accept_key_set(announce, after[0], 2)


def test_a_device_that_missed_the_announcement_follows_previous_one_link() -> None:
    old_private, old = _pair()
    new_private, new = _pair()
    announce = sign_key_set(1, [*old.keys, *new.keys], old_private, AT)
    retire = sign_key_set(2, list(new.keys), new_private, AT, previous=announce)
    accepted = accept_key_set(KeySetMessage.model_validate_json(retire.model_dump_json()), old, 0)
    assert accepted is not None and accepted[0].ids == new.ids
    # Two rotations missed: the chain is one link long, the device is told to be re-provisioned.
    newer_private, newer = _pair()
    announce2 = sign_key_set(3, [*new.keys, *newer.keys], new_private, AT)
    retire2 = sign_key_set(4, list(newer.keys), newer_private, AT, previous=announce2)
    with pytest.raises(IntegrityError, match="does not trust"):
        accept_key_set(retire2, old, 0)


def test_forged_tampered_and_self_dropping_sets_are_refused() -> None:
    old_private, old = _pair()
    intruder_private, intruder = _pair()
    forged = sign_key_set(5, list(intruder.keys), intruder_private, AT)
    with pytest.raises(IntegrityError, match=f"signed by key {intruder.ids[0]}, which this device does not trust"):
        accept_key_set(forged, old, 0)
    # Signed by the trusted key, then a key swapped in: the signature no longer matches.
    genuine = sign_key_set(1, list(old.keys), old_private, AT)
    tampered = genuine.model_copy(update={"keys": [*genuine.keys, TrustedKey.of(intruder.keys[0])]})
    with pytest.raises(IntegrityError, match=r"signature by key .* is invalid"):
        accept_key_set(tampered, old, 0)
    # The trusted key signs a set without itself: refused (a key hands over by announcing the new one beside it).
    handover = sign_key_set(1, list(intruder.keys), old_private, AT)
    with pytest.raises(IntegrityError, match="not in the set it signs"):
        accept_key_set(handover, old, 0)
    # Signed by the trusted key, but one key's bytes do not hash to its id.
    wrong_id = genuine.model_copy(
        update={
            "keys": [*genuine.keys, TrustedKey(key_id="0" * 16, public_key=TrustedKey.of(intruder.keys[0]).public_key)]
        }
    )
    wrong_id.signature = base64.b64encode(old_private.sign(signed_bytes(wrong_id))).decode()
    with pytest.raises(IntegrityError, match="does not match its id"):
        accept_key_set(wrong_id, old, 0)


def test_a_key_set_verifies_a_signature_by_any_of_its_keys_and_names_an_untrusted_one() -> None:
    old_private, old = _pair()
    new_private, new = _pair()
    both = KeySet((*old.keys, *new.keys))
    data = b'{"a":1}'
    verify_bytes(data, sign_bytes(data, old_private), both)
    verify_bytes(data, sign_bytes(data, new_private), both)
    with pytest.raises(IntegrityError, match=re.escape(f"signed by key {old.ids[0]} (another key, not trusted here)")):
        verify_bytes(data, sign_bytes(data, old_private), new)


def test_the_agent_trusted_set_survives_a_restart_and_keeps_retired_keys_for_installed_bundles(
    tmp_path: Path,
) -> None:
    old_private, old = _pair()
    new_private, new = _pair()
    trust = TrustedKeys(tmp_path, old.keys[0])
    assert trust.ids == list(old.ids) and trust.seq == 0
    assert trust.apply(sign_key_set(1, [*old.keys, *new.keys], old_private, AT))
    assert trust.apply(sign_key_set(2, list(new.keys), new_private, AT))
    restarted = TrustedKeys(tmp_path, old.keys[0])  # same configured key: the stored set wins
    assert restarted.ids == list(new.ids) and restarted.seq == 2
    assert set(restarted.installed().ids) == {*old.ids, *new.ids}  # bundles installed while old was trusted
    assert restarted.current().ids == new.ids  # what every update must be signed by
    with pytest.raises(IntegrityError, match="older than the one held"):
        restarted.apply(sign_key_set(1, [*old.keys, *new.keys], old_private, AT))
    # Re-provisioned with another public key: the configured key wins over the stored set.
    _, other = _pair()
    reprovisioned = TrustedKeys(tmp_path, other.keys[0])
    assert reprovisioned.ids == [key_id(other.keys[0])] and reprovisioned.seq == 0

"""The wire contract: manifest round trip, signatures, tamper detection, atomic writes, drift helpers and
the record encoder, on a real bundle converted from a real MLflow model (the `rf_bundle` fixture)."""

from __future__ import annotations

import math
import shutil
import stat
from pathlib import Path

import numpy as np
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts.bundle import atomic_directory, load_bundle, parse_manifest
from contracts.drift import bin_counts, categorical_profile, js_distance, numeric_profile, psi, psi_band
from contracts.errors import InputError, IntegrityError, NotFoundError, SchemaError
from contracts.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, FeatureSpec, canonical_bytes
from contracts.runtime import OnnxModel, encode_records
from contracts.signing import generate_keypair, key_id, load_private_key, load_public_key, sign_bytes, verify_bytes
from tests.conftest import TrainedBundle


@pytest.fixture()
def bundle_copy(rf_bundle: TrainedBundle, tmp_path: Path) -> Path:
    """A private copy of the session's signed bundle, free to tamper with."""
    return Path(shutil.copytree(rf_bundle.bundle, tmp_path / "bundle"))


def _public(rf_bundle: TrainedBundle):  # type: ignore[no-untyped-def]
    return load_public_key(rf_bundle.public_key)


# --- manifest and signature round trips ---------------------------------------------------------------


def test_manifest_json_round_trip(rf_bundle: TrainedBundle) -> None:
    raw = (rf_bundle.bundle / MANIFEST_FILE).read_bytes()
    manifest = parse_manifest(raw)
    again = parse_manifest(manifest.to_json_bytes())
    assert again == manifest
    assert canonical_bytes(again) == canonical_bytes(manifest)
    assert again.to_json_bytes() == raw  # the converter writes exactly this form
    # The manifest carries what the contract promises.
    assert manifest.name == rf_bundle.name and manifest.version >= 1
    assert [spec.name for spec in manifest.inputs] == manifest.feature_names
    assert set(manifest.reference_profile) == set(manifest.feature_names)
    assert manifest.lineage.run_id == rf_bundle.run_id and manifest.lineage.metrics
    assert len(manifest.onnx.sha256) == 64 and manifest.onnx.size == (rf_bundle.bundle / MODEL_FILE).stat().st_size
    assert manifest.golden_samples and manifest.parity.rows > 0


def test_manifest_rejects_unknown_fields_and_bad_json() -> None:
    with pytest.raises(InputError, match="not valid JSON"):
        parse_manifest(b"{not json")
    with pytest.raises(InputError, match="contract v1"):
        parse_manifest(orjson.dumps({"schema_version": "v1", "name": "x"}))


def test_signature_round_trip(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path / "keys")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    private, public = load_private_key(private_path), load_public_key(public_path)
    document = sign_bytes(b"payload", private)
    verify_bytes(b"payload", document, public)
    assert orjson.loads(document)["key_id"] == key_id(public)
    with pytest.raises(IntegrityError, match="altered"):
        verify_bytes(b"payload!", document, public)
    with pytest.raises(InputError, match="already exists"):
        generate_keypair(tmp_path / "keys")


def test_signed_bundle_loads_and_replays(rf_bundle: TrainedBundle) -> None:
    bundle = load_bundle(rf_bundle.bundle, _public(rf_bundle))
    assert bundle.signed
    assert OnnxModel.load(bundle).check_golden_samples() <= bundle.manifest.golden_tolerance
    # Re-indenting the manifest does not break the signature: it covers the canonical form.
    path = rf_bundle.bundle / MANIFEST_FILE
    assert canonical_bytes(parse_manifest(orjson.dumps(orjson.loads(path.read_bytes())))) == canonical_bytes(
        bundle.manifest
    )


# --- tamper detection ------------------------------------------------------------------------------------


def test_a_changed_byte_in_the_model_is_a_sha_mismatch(bundle_copy: Path, rf_bundle: TrainedBundle) -> None:
    model = bundle_copy / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_bundle(bundle_copy, _public(rf_bundle))
    with pytest.raises(IntegrityError, match="sha256"):
        load_bundle(bundle_copy)  # checked even without a public key


def test_a_truncated_model_is_a_size_mismatch(bundle_copy: Path) -> None:
    model = bundle_copy / MODEL_FILE
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="bytes but the manifest says"):
        load_bundle(bundle_copy)


def test_a_changed_manifest_field_breaks_the_signature(bundle_copy: Path, rf_bundle: TrainedBundle) -> None:
    path = bundle_copy / MANIFEST_FILE
    document = orjson.loads(path.read_bytes())
    document["golden_tolerance"] = 0.5  # loosen the gate: exactly what an attacker would do
    path.write_bytes(orjson.dumps(document))
    load_bundle(bundle_copy)  # without a key only the sha256 is checked, and the model is intact
    with pytest.raises(IntegrityError, match="altered after signing"):
        load_bundle(bundle_copy, _public(rf_bundle))


def test_a_swapped_model_with_a_matching_sha_breaks_the_signature(
    bundle_copy: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    """Replacing model.onnx and updating its sha256 in the manifest is caught: the signature covers both."""
    shutil.copy(logreg_bundle_v2.bundle / MODEL_FILE, bundle_copy / MODEL_FILE)
    other = parse_manifest((logreg_bundle_v2.bundle / MANIFEST_FILE).read_bytes())
    path = bundle_copy / MANIFEST_FILE
    document = orjson.loads(path.read_bytes())
    document["onnx"] = other.onnx.model_dump(mode="json")
    path.write_bytes(orjson.dumps(document))
    with pytest.raises(IntegrityError, match="signature is invalid"):
        load_bundle(bundle_copy, _public(rf_bundle))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "unsigned"),
        (b"garbage", "malformed"),
        (b'{"algorithm": "ed25519", "key_id": "x", "signature": "not base64!"}', "malformed"),
        (b'{"algorithm": "rsa", "key_id": "x", "signature": "AAAA"}', "unsupported signature algorithm"),
        (b'{"algorithm": "ed25519", "key_id": "x", "signature": "AAAA"}', "signature is invalid"),
    ],
)
def test_missing_or_garbled_signature(
    bundle_copy: Path, rf_bundle: TrainedBundle, content: bytes | None, message: str
) -> None:
    path = bundle_copy / SIGNATURE_FILE
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    with pytest.raises(IntegrityError, match=message):
        load_bundle(bundle_copy, _public(rf_bundle))


def test_a_signature_by_another_key(bundle_copy: Path, rf_bundle: TrainedBundle) -> None:
    manifest = parse_manifest((bundle_copy / MANIFEST_FILE).read_bytes())
    intruder = Ed25519PrivateKey.generate()
    (bundle_copy / SIGNATURE_FILE).write_bytes(sign_bytes(canonical_bytes(manifest), intruder))
    expected = key_id(_public(rf_bundle))
    with pytest.raises(IntegrityError, match=f"invalid for key {expected}: it was signed by key") as caught:
        load_bundle(bundle_copy, _public(rf_bundle))
    assert key_id(intruder.public_key()) in str(caught.value)
    # ... and the intruder's own key accepts it: the check is about *which* key, not the format.
    assert load_bundle(bundle_copy, intruder.public_key()).signed


def test_missing_pieces(bundle_copy: Path, tmp_path: Path) -> None:
    (bundle_copy / MODEL_FILE).unlink()
    with pytest.raises(IntegrityError, match="incomplete"):
        load_bundle(bundle_copy)
    (bundle_copy / MANIFEST_FILE).unlink()
    with pytest.raises(InputError, match="is not a bundle"):
        load_bundle(bundle_copy)
    with pytest.raises(NotFoundError, match="not found"):
        load_bundle(tmp_path / "nowhere")


# --- atomic_directory ------------------------------------------------------------------------------------


def test_atomic_directory_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "out" / "bundle"
    with pytest.raises(RuntimeError), atomic_directory(final) as building:
        (building / "model.onnx").write_bytes(b"half")
        assert building.parent == final.parent and building != final
        raise RuntimeError("gate failed")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_atomic_directory_keeps_the_old_content_on_failure_and_replaces_it_on_success(tmp_path: Path) -> None:
    final = tmp_path / "bundle"
    with atomic_directory(final) as building:
        (building / "v").write_text("1")
    assert (final / "v").read_text() == "1"
    assert stat.S_IMODE(final.stat().st_mode) == 0o755
    with pytest.raises(KeyboardInterrupt), atomic_directory(final) as building:
        (building / "v").write_text("2")
        raise KeyboardInterrupt
    assert (final / "v").read_text() == "1"
    with atomic_directory(final) as building:
        (building / "v").write_text("3")
    assert (final / "v").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# --- drift helpers ---------------------------------------------------------------------------------------


def test_psi_of_identical_and_shifted_distributions() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(50, 5, 20_000)
    profile = numeric_profile(reference)
    edges = np.asarray(profile.bin_edges)
    same, _ = bin_counts(edges, rng.normal(50, 5, 20_000))
    shifted, _ = bin_counts(edges, rng.normal(55, 5, 20_000))
    assert psi(np.asarray(profile.proportions), np.asarray(profile.proportions)) == pytest.approx(0.0, abs=1e-12)
    assert psi(np.asarray(profile.proportions), same) < 0.01
    assert psi(np.asarray(profile.proportions), shifted) > 0.25
    assert psi_band(psi(np.asarray(profile.proportions), shifted)) == "significant"
    assert psi_band(0.15) == "moderate" and psi_band(0.01) == "stable"
    assert js_distance(np.asarray([1, 2, 3]), np.asarray([1, 2, 3])) == pytest.approx(0.0, abs=1e-9)
    assert js_distance(np.asarray([1, 0]), np.asarray([0, 1])) == pytest.approx(1.0)


def test_bin_counts_matches_numeric_profile_binning() -> None:
    rng = np.random.default_rng(1)
    values = np.round(rng.gamma(2.0, 1.6, 5000), 3)  # rounded: many values sit exactly on an edge
    values[rng.random(5000) < 0.05] = np.nan
    profile = numeric_profile(values)
    counts, missing = bin_counts(np.asarray(profile.bin_edges), values)
    assert len(counts) == len(profile.bin_edges) + 1 == len(profile.proportions)
    assert np.allclose(counts / counts.sum(), profile.proportions, atol=1e-12)
    assert missing == int(np.isnan(values).sum())
    assert profile.missing_rate == pytest.approx(missing / values.size)
    constant = numeric_profile(np.full(100, 3.0))
    assert len(constant.bin_edges) == 1 and sum(constant.proportions) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no values"):
        numeric_profile(np.full(10, np.nan))


def test_categorical_profile() -> None:
    profile = categorical_profile(["a", "b", "a", "", None, "a"])
    assert profile.frequencies == {"a": 0.75, "b": 0.25}
    assert profile.missing_rate == pytest.approx(2 / 6)


# --- encode_records --------------------------------------------------------------------------------------

SCHEMA = [
    FeatureSpec(name="temperature", kind="numeric"),
    FeatureSpec(name="rpm", kind="numeric", nullable=False),
    FeatureSpec(name="firmware", kind="categorical", categories=["v1", "v2"]),
    FeatureSpec(name="site", kind="categorical", categories=["lyon"], nullable=False),
]
GOOD = {"temperature": 61.5, "rpm": 1500, "firmware": "v1", "site": "lyon"}


def test_encode_records_builds_the_feed() -> None:
    feed = encode_records([GOOD, {**GOOD, "temperature": None, "firmware": None}], SCHEMA)
    assert feed["temperature"].dtype == np.float32 and feed["temperature"].shape == (2, 1)
    assert math.isnan(feed["temperature"][1, 0])
    assert feed["firmware"][:, 0].tolist() == ["v1", ""]
    assert feed["rpm"][:, 0].tolist() == [1500.0, 1500.0]
    assert encode_records([{**GOOD, "note": "x"}], SCHEMA, allow_extra=True).keys() == {s.name for s in SCHEMA}


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({k: v for k, v in GOOD.items() if k != "rpm"}, "rpm", "is missing"),
        ({**GOOD, "humidity": 3.0}, "humidity", "unknown field"),
        ({**GOOD, "temperature": "hot"}, "temperature", "must be a number, got str"),
        ({**GOOD, "temperature": True}, "temperature", "must be a number, got bool"),
        ({**GOOD, "firmware": 2}, "firmware", "must be a string category, got int"),
        ({**GOOD, "rpm": float("nan")}, "rpm", "NaN but is required"),
        ({**GOOD, "rpm": None}, "rpm", "required"),
        ({**GOOD, "site": None}, "site", "required"),
        ({**GOOD, "temperature": float("inf")}, "temperature", "infinite"),
    ],
)
def test_encode_records_errors_name_the_field(record: dict, field: str, message: str) -> None:
    with pytest.raises(SchemaError, match=message) as caught:
        encode_records([GOOD, record], SCHEMA)
    assert caught.value.field == field
    assert f"'{field}'" in str(caught.value) and "record 1" in str(caught.value)


def test_encode_records_rejects_an_empty_batch_and_non_objects() -> None:
    with pytest.raises(SchemaError, match="empty"):
        encode_records([], SCHEMA)
    with pytest.raises(SchemaError, match="JSON object"):
        encode_records([["not", "a", "dict"]], SCHEMA)  # type: ignore[list-item]

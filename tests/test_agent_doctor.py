"""`edgeloop agent doctor` through the real CLI: a healthy device (a signed bundle, its key, a real Mosquitto, a
writable state dir) prints only ok lines (the clock line says what the kernel says); the broker down, a wrong
key and a state dir on a read-only file system each print a fail line with the fix, and exit 9."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts.errors import CheckFailed
from contracts.keyset import sign_key_set
from contracts.signing import (
    PRIVATE_KEY_FILE,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    public_key_of,
)
from edge_agent.trust import TrustedKeys
from tests.cli_helpers import CliResult, run_edgeloop
from tests.conftest import Broker, TrainedBundle, free_port

LINE = re.compile(r"^(ok|warn|fail)\s+(\S+(?: \S+)?)\s{2,}(.*)$")


def _lines(result: CliResult) -> dict[str, tuple[str, str]]:
    """check name -> (status, rest of its line)."""
    found = {}
    for line in result.stdout.splitlines():
        match = LINE.match(line)
        if match:
            found[match.group(2)] = (match.group(1), match.group(3))
    return found


@pytest.fixture()
def doctor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, rf_bundle: TrainedBundle
):  # type: ignore[no-untyped-def]
    def run(*extra: str, key: Path | None = None, state_dir: Path | None = None) -> CliResult:
        args = ["agent", "doctor", "--bundle", str(rf_bundle.bundle), "--public-key", str(key or rf_bundle.public_key),
                "--state-dir", str(state_dir or tmp_path / "state"), *extra]  # fmt: skip
        return run_edgeloop(args, monkeypatch, capsys, tmp_path / "home")

    return run


CHECKS = {"platform", "python", "runtime", "state dir", "clock", "public key", "bundle", "broker"}


def test_a_healthy_device_prints_all_ok(doctor, broker: Broker) -> None:  # type: ignore[no-untyped-def]
    result = doctor("--mqtt-url", broker.url)
    lines = _lines(result)
    assert set(lines) == CHECKS, result.stdout
    assert result.exit_code == 0, (result.stdout, result.stderr)
    clock_status, clock_text = lines.pop("clock")  # the kernel's NTP state: not this test's to set
    assert clock_status == "ok" or (clock_status == "warn" and "enable NTP" in clock_text), clock_text
    assert all(status == "ok" for status, _ in lines.values()), result.stdout
    assert "machine-failure v1 verifies (signature and sha256)" in lines["bundle"][1]
    assert f"127.0.0.1:{broker.port}" in lines["broker"][1] and "desired states and the key set" in lines["broker"][1]


def test_after_a_key_rotation_doctor_shows_the_trusted_set_and_refuses_a_bundle_by_the_retired_key(
    doctor,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    rf_bundle: TrainedBundle,
) -> None:
    old_private = load_private_key(rf_bundle.keys_dir / PRIVATE_KEY_FILE)
    new_private = Ed25519PrivateKey.generate()
    old, new = public_key_of(old_private), public_key_of(new_private)
    trust = TrustedKeys(tmp_path / "state", load_public_key(rf_bundle.public_key))  # what the agent kept
    trust.apply(sign_key_set(1, [old, new], old_private, "2026-01-01T00:00:00Z"))
    trust.apply(sign_key_set(2, [new], new_private, "2026-01-01T00:00:00Z"))
    result = doctor()
    status, text = _lines(result)["public key"]
    assert status == "ok" and f"trusts {key_id(new)} (key set 2, trusted-keys.json)" in text, text
    status, text = _lines(result)["bundle"]  # --bundle is an update: the retired key no longer signs one
    assert status == "fail" and f"signed by key {key_id(old)} (another key, not trusted here)" in text, text


def test_broker_down_wrong_key_and_read_only_state_dir_each_fail_with_the_fix(
    doctor,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    down = doctor("--mqtt-url", f"mqtt://127.0.0.1:{free_port()}")
    assert down.exit_code == CheckFailed.exit_code == 9, down.stdout
    status, text = _lines(down)["broker"]
    assert status == "fail" and "refused" in text.lower() and "start the broker" in text, text
    assert down.errors == ["error: 1 check(s) failed: broker; each line above says what to do"], down.stderr

    _private, other_public = generate_keypair(tmp_path / "other-keys")
    wrong = doctor(key=other_public)
    assert wrong.exit_code == 9
    status, text = _lines(wrong)["bundle"]
    assert status == "fail" and "signature" in text and "signed by the key this device trusts" in text, text

    read_only = Path("/sys/kernel")  # sysfs: no file can be created there, even by root
    stuck = doctor(state_dir=read_only / "edgeloop-state")
    assert stuck.exit_code == 9
    status, text = _lines(stuck)["state dir"]
    assert status == "fail" and "not writable" in text and "--state-dir" in text, text


def test_an_unknown_action_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:  # fmt: skip
    result = run_edgeloop(["agent", "docter"], monkeypatch, capsys, tmp_path)
    assert result.exit_code == 2 and result.errors == [
        "error: unknown action 'docter': `edgeloop agent` serves, `agent doctor` checks, `agent import PATH` installs"
    ], result.stderr

"""MQTT over TLS with a user name and password: a real Mosquitto with a test CA, certificates made here."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.agent_helpers import AgentServer, free_port
from tests.conftest import Broker, TrainedBundle, _spawn_mosquitto, _wait_port


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
                 issuer_key: ec.EllipticCurvePrivateKey | None) -> x509.Certificate:  # fmt: skip
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture()
def tls_broker(tmp_path: Path) -> Iterator[tuple[Broker, Path]]:
    directory = tmp_path / "tls-broker"
    directory.mkdir()
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("edgeloop test CA", ca_key, None, None)
    server = _certificate("127.0.0.1", server_key, ca, ca_key)
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, directory / "server.key")
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(directory / "passwd"), "device", "pa55"], check=True)
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\ncafile {directory}/ca.pem\ncertfile {directory}/server.pem\n"
        f"keyfile {directory}/server.key\nallow_anonymous false\npassword_file {directory}/passwd\n"
        # started as root, mosquitto drops to user `mosquitto`, which cannot read pytest's 0700 tmp dirs
        "user root\n"
    )
    broker = Broker("127.0.0.1", port, _spawn_mosquitto(config), config)
    _wait_port("127.0.0.1", port)
    yield broker, directory / "ca.pem"
    broker.stop()


def test_agent_connects_with_tls_and_a_password(
    tmp_path: Path, tls_broker: tuple[Broker, Path], rf_bundle: TrainedBundle
) -> None:
    broker, ca = tls_broker
    agent = AgentServer(
        state_dir=tmp_path / "state",
        bundle=rf_bundle.bundle,
        public_key=rf_bundle.public_key,
        mqtt_url=f"mqtts://127.0.0.1:{broker.port}",
        mqtt_ca_file=ca,
        mqtt_username="device",
        mqtt_password="pa55",
    )
    try:
        assert agent.agent.sync is not None and agent.agent.sync.connected.wait(10)
        assert agent.client.get("/v1/model").json()["mqtt"] == "connected"
    finally:
        agent.stop()


def test_a_wrong_password_is_refused_and_the_agent_keeps_serving(
    tmp_path: Path, tls_broker: tuple[Broker, Path], rf_bundle: TrainedBundle
) -> None:
    broker, ca = tls_broker
    agent = AgentServer(
        state_dir=tmp_path / "state",
        bundle=rf_bundle.bundle,
        public_key=rf_bundle.public_key,
        mqtt_url=f"mqtts://127.0.0.1:{broker.port}",
        mqtt_ca_file=ca,
        mqtt_username="device",
        mqtt_password="wrong",
    )
    try:
        time.sleep(1.0)
        assert agent.agent.sync is not None and not agent.agent.sync.connected.is_set()
        assert agent.client.get("/readyz").status_code == 200
    finally:
        agent.stop()

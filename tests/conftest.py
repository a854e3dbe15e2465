"""Shared fixtures: real parts only. A tiny MLflow store in a temp dir, real bundles built by the
converter once per session, and a real Mosquitto on a free port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from contracts.logs import configure_logging

configure_logging("WARNING")


@pytest.fixture(autouse=True)
def no_ambient_tracking_uri() -> Iterator[None]:
    """Every test starts and ends without MLFLOW_TRACKING_URI in the environment.

    `mlflow.set_tracking_uri` also writes that variable into os.environ, and edgeloop reads it (contracts.tracking), so
    one in-process `train` would otherwise point every later command of the session at that test's store. A test that
    needs the variable sets it with monkeypatch.
    """
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@dataclass(frozen=True)
class TrainedBundle:
    """A model trained, registered and converted in a session-scoped MLflow store."""

    name: str
    data: Path
    bundle: Path
    keys_dir: Path
    tracking_uri: str
    run_id: str

    @property
    def public_key(self) -> Path:
        return self.keys_dir / "edgeloop-signing.pub"


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("edgeloop")


@pytest.fixture(scope="session")
def machines_csv(workspace: Path) -> Path:
    from trainer.sample_data import write_machines

    return write_machines(workspace / "machines.csv", rows=2000)


def _train_and_convert(workspace: Path, data: Path, kind: str, name: str) -> TrainedBundle:
    from converter.convert import convert_model
    from converter.settings import ConvertSettings
    from trainer.settings import TrainSettings
    from trainer.train import train_model

    tracking = f"sqlite:///{workspace / 'mlflow.db'}"
    keys = workspace / "keys"
    result = train_model(
        data,
        "failure_24h",
        name,
        kind,
        ["reading_id"],
        TrainSettings(tracking_uri=tracking, artifact_root=workspace / "artifacts"),
    )
    out = workspace / "bundles" / f"{name}-v{result.version}"
    convert_model(f"{name}/{result.version}", out, ConvertSettings(tracking_uri=tracking, keys_dir=keys))
    return TrainedBundle(name, data, out, keys, tracking, result.run_id)


@pytest.fixture(scope="session")
def rf_bundle(workspace: Path, machines_csv: Path) -> TrainedBundle:
    """A random forest on the sample data, version 1 of `machine-failure`."""
    return _train_and_convert(workspace, machines_csv, "rf", "machine-failure")


@pytest.fixture(scope="session")
def logreg_bundle_v2(workspace: Path, machines_csv: Path, rf_bundle: TrainedBundle) -> TrainedBundle:
    """Version 2 of `machine-failure` (logistic regression), signed with the same key: an update."""
    return _train_and_convert(workspace, machines_csv, "logreg", "machine-failure")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    config: Path

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def start(self) -> None:
        """(Re)start on the same port, keeping the persistence file."""
        self.process = _spawn_mosquitto(self.config)
        _wait_port(self.host, self.port)


def _spawn_mosquitto(config: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


def start_mosquitto(directory: Path) -> Broker:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        pytest.fail("mosquitto is not installed; run .ci/run or apt-get install mosquitto")
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {directory}/\nmax_queued_messages 100000\n"
        # As root, Mosquitto drops to user `mosquitto`, which cannot write pytest's 0700 tmp dirs: sessions would
        # silently not survive a restart. `user root` keeps the starting user (ignored when not root).
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    process = _spawn_mosquitto(config)
    _wait_port("127.0.0.1", port)
    return Broker("127.0.0.1", port, process, config)


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A private Mosquitto on a free port, for one test."""
    instance = start_mosquitto(tmp_path / "mosquitto")
    yield instance
    instance.stop()


@pytest.fixture()
def durable_broker(tmp_path: Path) -> Iterator[Broker]:
    """Like `broker`, but sessions and queued messages really survive `.stop()` / `.start()`.

    Started as root, Mosquitto drops to user `mosquitto`, which cannot write into pytest's 0700 tmp dirs, so
    `broker`'s persistence file is never written there (sessions are lost on a restart); `user root` keeps
    it as the starting user. Mosquitto ignores `user` when it is not started as root.
    """
    instance = start_mosquitto(tmp_path / "mosquitto-durable")  # `broker` is durable too now; kept as a name
    yield instance
    instance.stop()

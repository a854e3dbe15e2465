"""`make check-arm64` / `make check-armhf`: the edge agent on a Raspberry Pi's userland, emulated on x86.

In a cached Debian bookworm rootfs of the board's architecture (deploy/arm_rootfs.py; qemu-user via binfmt),
install the base package from this checkout the way docs/raspberry-pi.md tells a user to, start
`python -m edge_agent` on a signed bundle with telemetry to a Mosquitto started here on a free port (the chroot
shares the host's network), then check `/readyz`, one prediction against the manifest's first golden sample and
one telemetry window received on the host. Prints the board's `uname -m`, start-to-ready under emulation and
the golden answer; any mismatch ends the run with one `error: check-<arch>: ...` line and exit status 1.

    usage: python deploy/check_arm.py {arm64,armhf} --bundle DIR --public-key FILE
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from arm_rootfs import PROFILES, Profile, chroot, ensure_rootfs, fail, locked, mounted

from contracts.manifest import Manifest
from contracts.telemetry import TelemetryWindow
from contracts.topics import device_topic

__all__ = ["main", "pypi_requirements"]

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "constraints.txt", "contracts", "edge_agent", "edgeloop", "trainer"]
SOURCES += ["converter", "cloud_sync"]
WORK = "/opt/edgeloop-check"  # inside the rootfs, emptied at every run
TOKEN = "check-arm"
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_ROOT_USER_ACTION": "ignore",
    "PIP_DEFAULT_TIMEOUT": "180",
    **{name: value for name, value in os.environ.items() if name.lower() in ("http_proxy", "https_proxy", "no_proxy")},
}
_CA_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
_HOST_CA = next((os.environ[name] for name in _CA_VARIABLES if name in os.environ), "")


@dataclass(frozen=True)
class Board:
    """The rootfs being checked."""

    profile: Profile
    root: Path

    def run(self, *command: str, what: str) -> str:
        done = subprocess.run(chroot(self.root, *command), capture_output=True, text=True, env=ENV)
        if done.returncode != 0:
            print("\n".join((done.stderr or done.stdout).strip().splitlines()[-8:]))
            raise fail(self.profile, f"{what} failed in the {self.profile.arch} rootfs (exit {done.returncode})")
        return done.stdout.strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _copy_checkout(board: Board, bundle: Path, public_key: Path) -> str:
    """The checkout, bundle and key into the rootfs; returns the path (in the rootfs) of edgeloop's wheel, built
    from the checkout on the host: it is pure Python, the same on every architecture, and pip builds it under
    emulation ten times slower."""
    work = board.root / WORK.lstrip("/")
    shutil.rmtree(work, ignore_errors=True)
    (work / "src").mkdir(parents=True)
    for name in SOURCES:
        source = REPO / name
        target = work / "src" / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    shutil.copytree(bundle, work / "bundle")
    if _HOST_CA:  # a TLS-intercepting proxy: pip in the rootfs must trust what the host's pip trusts
        shutil.copy(_HOST_CA, work / "host-ca.pem")
        ENV["PIP_CERT"] = f"{WORK}/host-ca.pem"
    shutil.copy(public_key, work / "signing.pub")
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(work / "src")]
    if subprocess.run(build, capture_output=True).returncode != 0:
        raise fail(board.profile, "pip wheel could not build edgeloop from the checkout")
    return f"{WORK}/dist/{next((work / 'dist').glob('edgeloop-*.whl')).name}"


def pypi_requirements(profile: Profile) -> list[str]:
    """The base install's requirements minus those this board takes from Debian."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    skip = set(profile.from_debian)
    return [req for req in project["dependencies"] if re.split(r"[<>=!~\[; ]", req)[0].lower() not in skip]


def _venv_key(profile: Profile) -> str:
    """What the dependencies venv is made of: a change in any of it installs a fresh one."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    made_of = [profile.arch, *profile.from_debian, *dependencies, (REPO / "constraints.txt").read_text()]
    return hashlib.sha256("\n".join(made_of).encode()).hexdigest()[:12]


def _install(board: Board, wheel: str) -> tuple[str, float]:
    """The base package from the checkout in a venv, as docs/raspberry-pi.md has the user do it; returns the venv
    (inside the rootfs) and the seconds it took. The venv is kept, keyed by what its dependencies are made of:
    the next run only reinstalls edgeloop from the checkout into it (EDGELOOP_ARM_FRESH=1: a fresh one anyway)."""
    started = time.monotonic()
    venv = f"/opt/edgeloop-venv-{_venv_key(board.profile)}"
    done = board.root / venv.lstrip("/") / ".edgeloop-complete"
    pip = (f"{venv}/bin/python", "-m", "pip", "install", "-q")
    constraints = ("-c", f"{WORK}/src/constraints.txt")
    if done.exists() and not os.environ.get("EDGELOOP_ARM_FRESH"):
        print(f"== install: edgeloop from the checkout into the cached venv {venv} (same dependencies)")
        board.run(*pip, "--no-deps", "--force-reinstall", wheel, what="pip install --no-deps edgeloop")
    else:
        for old in (board.root / "opt").glob("edgeloop-venv-*"):
            shutil.rmtree(old)
        if board.profile.from_debian:
            print(f"== install: venv with Debian's {', '.join(board.profile.from_debian[1:-1])}, the rest PyPI wheels")
            board.run("python3", "-m", "venv", "--system-site-packages", venv, what="python3 -m venv")
            board.run(*pip, "--upgrade", "pip", "wheel", what="pip install --upgrade pip")
            requirements = pypi_requirements(board.profile)
            board.run(*pip, *constraints, "--only-binary=:all:", *requirements, what="pip install (PyPI wheels)")
            board.run(*pip, "--no-deps", wheel, what="pip install --no-deps edgeloop")
        else:
            print("== install: venv, pip install -c constraints.txt . (PyPI's wheels)")
            board.run("python3", "-m", "venv", venv, what="python3 -m venv")
            board.run(*pip, "--upgrade", "pip", "wheel", what="pip install --upgrade pip")
            board.run(*pip, *constraints, wheel, what="pip install edgeloop")
        done.touch()
    heavy = board.run(
        f"{venv}/bin/python",
        "-c",
        "import importlib.util as u; print(*[m for m in ('mlflow', 'sklearn', 'skl2onnx', 'onnx', 'pandas')"
        " if u.find_spec(m)])",
        what="checking the install",
    )
    if heavy:
        raise fail(board.profile, f"the base install pulled {heavy}")
    return venv, time.monotonic() - started


@contextmanager
def _broker() -> Iterator[int]:
    """A Mosquitto on a free port of the host, for this run only."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "mosquitto.conf"
        config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n" + ("user root\n" * (os.geteuid() == 0)))
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"error: mosquitto did not listen on port {port}") from None
                    time.sleep(0.05)
            yield port
        finally:
            process.terminate()
            process.wait(10)


def _subscribe(port: int, topic: str) -> tuple[mqtt.Client, queue.Queue[bytes]]:
    received: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="check-arm-host")
    client.on_message = lambda _c, _u, message: received.put(bytes(message.payload))
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    return client, received


def _http(port: int, path: str, body: object | None = None) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _wait_ready(board: Board, agent: subprocess.Popen[bytes], port: int, log: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 180:
        if agent.poll() is not None:
            print(log.read_text()[-2000:])
            raise fail(board.profile, f"the agent exited with status {agent.returncode} before it was ready")
        try:
            if _http(port, "/readyz")[0] == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    print(log.read_text()[-2000:])
    raise fail(board.profile, "the agent was not ready after 180 s")


def _check_golden(board: Board, manifest: Manifest, port: int) -> str:
    sample = manifest.golden_samples[0]
    status, answer = _http(port, "/v1/predict", sample.inputs)
    if status != 200:
        raise fail(board.profile, f"/v1/predict answered {status}: {answer}")
    expected = dict(zip([str(c) for c in manifest.classes], sample.probabilities, strict=True))
    got = answer.get("probabilities")
    if answer.get("label") != sample.label or not isinstance(got, dict) or set(got) != set(expected):
        raise fail(board.profile, f"golden sample 0: answered {answer}, expected label {sample.label!r} {expected}")
    worst = max(abs(float(got[key]) - value) for key, value in expected.items())
    if worst > manifest.golden_tolerance:
        raise fail(board.profile, f"golden sample 0: probabilities off by {worst:.2e} > {manifest.golden_tolerance}")
    shown = ", ".join(f"{key}: {float(got[key]):.6f}" for key in expected)
    return f"label {answer['label']!r}, probabilities {{{shown}}} (manifest's golden sample 0; max |dp| {worst:.1e})"


def _check_telemetry(board: Board, received: queue.Queue[bytes], timeout: float) -> TelemetryWindow:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            window = TelemetryWindow.model_validate_json(received.get(timeout=left))
        except queue.Empty:
            break
        if window.requests >= 1:
            return window
    raise fail(board.profile, f"no telemetry window with the prediction reached the host broker in {timeout:.0f} s")


def _serve_and_check(board: Board, manifest: Manifest, venv: str) -> list[str]:
    device = f"check-{board.profile.arch}"
    port, interval = _free_port(), 2.0
    log = board.root / WORK.lstrip("/") / "agent.log"
    with _broker() as mqtt_port:
        client, received = _subscribe(mqtt_port, device_topic(device, "telemetry"))
        flags = {"--bundle": "bundle", "--state-dir": "state", "--public-key": "signing.pub"}
        argv = [arg for flag, name in flags.items() for arg in (flag, f"{WORK}/{name}")]
        argv += ["--port", str(port), "--token", TOKEN, "--device-id", device, "--mqtt-url"]
        argv += [f"mqtt://127.0.0.1:{mqtt_port}", "--telemetry-interval", str(interval)]
        print(f"== python -m edge_agent {' '.join(argv)}")
        env = {**ENV, "EDGELOOP_HOME": f"{WORK}/home"}
        with open(log, "wb") as out:
            command = chroot(board.root, f"{venv}/bin/python", "-m", "edge_agent", *argv)
            agent = subprocess.Popen(command, stdout=out, stderr=out, env=env)
        try:
            ready = _wait_ready(board, agent, port, log)
            model = _http(port, "/v1/model")[1]
            golden = _check_golden(board, manifest, port)
            window = _check_telemetry(board, received, timeout=30 * interval)
            agent.send_signal(signal.SIGTERM)
            if agent.wait(60) != 0:
                raise fail(board.profile, f"the agent exited with status {agent.returncode} on SIGTERM")
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
            client.loop_stop()
            client.disconnect()
    runtime = model.get("runtime", "onnxruntime")
    return [
        f"start-to-ready: {ready:.1f} s under emulation ({manifest.name} v{manifest.version}, runtime {runtime})",
        f"golden answer:  {golden}",
        f"telemetry:      window seq {window.seq} with {window.requests} request(s) received on the host broker",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", choices=sorted(PROFILES))
    parser.add_argument("--bundle", type=Path, required=True, help="a signed bundle directory")
    parser.add_argument("--public-key", type=Path, required=True, help="the signer's public key")
    args = parser.parse_args(argv)
    profile = PROFILES[args.arch]
    if not (args.bundle / "manifest.json").exists():
        raise fail(profile, f"{args.bundle} is not a bundle (no manifest.json): run `make train convert` first")
    manifest = Manifest.model_validate_json((args.bundle / "manifest.json").read_bytes())
    started = time.monotonic()
    board = Board(profile, ensure_rootfs(profile))
    rootfs = time.monotonic() - started
    with locked(board.root), mounted(board.root, profile):
        machine = board.run("uname", "-m", what="uname -m")
        python = board.run("python3", "--version", what="python3 --version")
        wheel = _copy_checkout(board, args.bundle, args.public_key)
        venv, installed = _install(board, wheel)
        lines = _serve_and_check(board, manifest, venv)
    print(f"== check-{profile.arch} passed")
    print(f"   board:          {machine} ({python}; qemu-{profile.qemu} on {os.uname().machine})")
    for line in lines:
        print(f"   {line}")
    total = time.monotonic() - started
    print(f"   cost:           rootfs {rootfs:.0f} s, install {installed:.0f} s, total {total:.0f} s")


if __name__ == "__main__":
    main()

"""`make check-cloud`, part 2: run by the python of a fresh `pip install '.[cloud]'` venv (deploy/check_cloud.sh).

Proves the cloud role works with the cloud extra alone, on SQLite and on PostgreSQL (a schema of its own in the
database at CHECK_CLOUD_PG_URL, dropped at the end): `edgeloop cloud` starts against a private Mosquitto,
`/readyz` answers, `edgeloop deploy BUNDLE_DIR` uploads the bundle and rolls it out to three simulated devices
(cloud_sync.fleet.simulator, the v1 contract over MQTT) that all end on it, `edgeloop devices --format json`
lists them, `/metrics` counts them, the dashboard page and its chart library are served, and `edgeloop cloud
migrate` finds the store at the newest schema revision (the cloud migrated it on start). Then a command of
another role (`edgeloop train`) fails in one line naming the extra to install.

    usage: VENV/bin/python deploy/check_cloud.py BUNDLE_DIR PUBLIC_KEY
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import sqlalchemy as sa

from cloud_sync.fleet.simulator import SimDevice
from contracts.manifest import Manifest
from contracts.signing import PUBLIC_KEY_FILE

__all__ = ["main"]

GROUP = "check-cloud"
TOKEN = "check-cloud"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"error: timed out after {timeout:.0f} s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextmanager
def mosquitto(workdir: Path) -> Iterator[int]:
    port = free_port()
    config = workdir / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(lambda: port_open(port), "mosquitto")
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def cloud(workdir: Path, mqtt_port: int, store_url: str, public_key: Path, schema: str | None) -> Iterator[str]:
    """`edgeloop cloud` of this venv on a free port until the block ends (SIGTERM, then its exit is checked)."""
    keys = workdir / "keys"
    keys.mkdir(exist_ok=True)
    shutil.copy(public_key, keys / PUBLIC_KEY_FILE)
    port = free_port()
    env = os.environ | {
        "EDGELOOP_HOME": str(workdir / "home"),
        "EDGELOOP_CLOUD_OPERATOR_TOKENS": json.dumps([f"ops:{TOKEN}"]),
        "EDGELOOP_CLOUD_ROLLOUT_TICK_S": "0.5",
        "EDGELOOP_CLOUD_KEYS_DIR": str(keys),
    }
    if schema:
        env["EDGELOOP_CLOUD_STORE_SCHEMA"] = schema
    command = [str(Path(sys.executable).parent / "edgeloop"), "cloud", "--port", str(port),
               "--mqtt-url", f"mqtt://127.0.0.1:{mqtt_port}", "--store-url", store_url,
               "--bundles-dir", str(workdir / "bundles")]  # fmt: skip
    log = (workdir / "cloud.log").open("wb")
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: process.poll() is None and httpx.get(url + "/readyz", timeout=2).status_code == 200,
             "edgeloop cloud's /readyz")  # fmt: skip
        print(f"   readyz:   {httpx.get(url + '/readyz').text}")
        yield url
    except BaseException:
        print((workdir / "cloud.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        log.close()
        if code not in (0, -signal.SIGTERM):  # uvicorn re-raises the signal once it has shut down gracefully
            raise SystemExit(f"error: edgeloop cloud exited with {code} on SIGTERM")


def edgeloop(*args: str, url: str = "", schema: str | None = None) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"EDGELOOP_CLOUD_URL": url, "EDGELOOP_CLOUD_TOKEN": TOKEN}
    if schema:
        env["EDGELOOP_CLOUD_STORE_SCHEMA"] = schema
    binary = str(Path(sys.executable).parent / "edgeloop")
    return subprocess.run([binary, *args], env=env, capture_output=True, text=True, timeout=120)


def check_store(label: str, store_url: str, schema: str | None, bundle: Path, public_key: Path) -> None:
    print(f"== edgeloop cloud on {label}")
    manifest = Manifest.model_validate_json((bundle / "manifest.json").read_text())
    with tempfile.TemporaryDirectory(prefix=f"check-cloud-{label}-") as tmp:
        workdir = Path(tmp)
        with mosquitto(workdir) as mqtt_port, cloud(workdir, mqtt_port, store_url, public_key, schema) as url:
            devices = [SimDevice(f"cc-{i}", GROUP, "127.0.0.1", mqtt_port).start() for i in (1, 2, 3)]
            try:
                wait(lambda: len(httpx.get(url + "/v1/devices", headers=_auth()).json()) == 3, "three devices")
                done = edgeloop("deploy", str(bundle), "--group", GROUP, "--canary", "cc-1", "--soak", "0", url=url)
                if done.returncode != 0:
                    raise SystemExit(f"error: edgeloop deploy failed: {done.stderr.strip()}")
                print(f"   deploy:   {' '.join(done.stdout.split('┏')[0].split())}")  # the line, not the table
                for device in devices:
                    if not device.wait_for(manifest.version, timeout=60):
                        raise SystemExit(f"error: {device.device_id} did not switch to v{manifest.version}")
                print(f"   devices:  cc-1, cc-2, cc-3 run {manifest.name} v{manifest.version}")
                listed = edgeloop("devices", "--group", GROUP, "--format", "json", url=url)
                rows = json.loads(listed.stdout)
                assert sorted(row["device_id"] for row in rows) == ["cc-1", "cc-2", "cc-3"], listed
                metrics = httpx.get(url + "/metrics", timeout=10).text
                assert 'edgeloop_cloud_devices{group="check-cloud"' in metrics, metrics[:2000]
                known = next(line for line in metrics.splitlines() if line.startswith("edgeloop_cloud_devices{"))
                print(f"   metrics:  {known}")
                page = httpx.get(url + "/dashboard", timeout=10)
                script = httpx.get(url + "/dashboard/static/chart.umd.min.js", timeout=10)
                assert page.status_code == 200 and "chart.umd.min.js" in page.text, page.status_code
                assert script.status_code == 200 and b"Chart.js v" in script.content[:200], script.status_code
                sizes = f"/dashboard {len(page.content)} bytes, chart.umd.min.js {len(script.content)} bytes"
                print(f"   dashboard: {sizes}")
            finally:
                for device in devices:
                    device.stop()
        done = edgeloop("cloud", "migrate", "--store-url", store_url, schema=schema)  # the migrations ship in the wheel
        assert done.returncode == 0 and "nothing to do" in done.stdout, done
        print(f"   migrate:  {' '.join(done.stdout.split())}")


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def check_other_roles_say_which_extra() -> None:
    print("== a command of another role, one line naming its extra")
    result = edgeloop("train", "--data", "missing.csv")
    line = result.stderr.strip()
    assert result.returncode == 13 and "pip install 'edgeloop[train]'" in line and "\n" not in line, result
    print(f"   edgeloop train: exit {result.returncode}, {line}")


def main() -> None:
    bundle, public_key = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    check_store("sqlite", f"sqlite:///{tempfile.mkdtemp(prefix='check-cloud-db-')}/cloud.db", None, bundle, public_key)
    pg_url = os.environ.get("CHECK_CLOUD_PG_URL", DEFAULT_PG)
    schema = f"check_cloud_{uuid.uuid4().hex[:8]}"
    try:
        check_store("postgresql", pg_url, schema, bundle, public_key)
    finally:
        engine = sa.create_engine(pg_url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
    check_other_roles_say_which_extra()


if __name__ == "__main__":
    main()

"""`edgeloop agent doctor`: a device's preflight, with the agent's own settings. Each check is one line, ok / warn /
fail, and what to do when it is not ok. No check changes anything on the device or on the broker.

    platform     64-bit Linux (onnxruntime ships no wheel for 32-bit ARM)
    python       its version and path
    runtime      onnxruntime importable (or the numpy runtime, slower)
    state dir    exists or can be made, writable, free space
    clock        the kernel's clock is synchronised (signatures' and telemetry windows' times depend on it)
    public key   set and readable; the key set the device trusts (after a key rotation: state_dir/trusted-keys.json)
    bundle       --bundle (by a trusted key) or the store's current bundle (by a trusted or retired key) verifies
                 (signature, sha256) and replays its golden samples
    broker       reachable with the agent's TLS and credentials; the ACL lets it subscribe to its desired states
                 and to the fleet's key set

Publishing is not probed: a test message on the device's topics would reach the cloud as real data.
"""

from __future__ import annotations

import ctypes
import platform
import shutil
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from contracts.errors import EdgeloopError
from contracts.keyset import KEYS_TOPIC
from contracts.topics import device_topic, group_desired
from edge_agent.settings import AgentSettings
from edge_agent.trust import TrustedKeys

__all__ = ["Check", "run_checks"]

Status = Literal["ok", "warn", "fail"]
_MIN_FREE = 200 * 2**20


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def _platform(_s: AgentSettings) -> Check:
    system, machine = platform.system(), platform.machine()
    if system != "Linux":
        return Check("platform", "warn", f"{system} {machine}", "devices are tested on 64-bit Linux")
    if machine not in ("x86_64", "aarch64", "arm64"):
        return Check("platform", "warn", f"Linux {machine} (32-bit?)", "use a 64-bit OS, or runtime=numpy")
    return Check("platform", "ok", f"Linux {machine}")


def _python(_s: AgentSettings) -> Check:
    version = ".".join(map(str, sys.version_info[:3]))  # pip refuses edgeloop below 3.11: shown, not judged
    return Check("python", "ok", f"{version} ({sys.executable})")


def _runtime(s: AgentSettings) -> Check:
    try:
        import onnxruntime

        return Check("runtime", "ok", f"onnxruntime {onnxruntime.__version__} (setting runtime={s.runtime})")
    except ImportError:
        if s.runtime == "onnxruntime":
            return Check("runtime", "fail", "onnxruntime is not installed", "pip install onnxruntime, or runtime=numpy")
        return Check(
            "runtime", "warn", "onnxruntime is not installed: the numpy runtime serves", "pip install onnxruntime"
        )


def _state_dir(s: AgentSettings) -> Check:
    path = Path(s.state_dir)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    fix = f"give the agent's user a writable directory: chown it, or set --state-dir (now {path})"
    if not existing.is_dir():
        return Check("state dir", "fail", f"{existing} is not a directory", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("state dir", "fail", f"{existing} is not writable ({exc.strerror})", fix)
    free = shutil.disk_usage(existing).free
    detail = f"{path} writable, {free / 2**20:,.0f} MB free"
    if free < _MIN_FREE:
        return Check("state dir", "warn", detail, f"free space: keep at least {_MIN_FREE // 2**20} MB for bundles")
    return Check("state dir", "ok", detail)


def _clock(_s: AgentSettings) -> Check:
    now = time.time()
    if now < 1_700_000_000:  # before Nov 2023: no clock at all (a board without RTC that never synced)
        return Check("clock", "fail", time.strftime("%Y-%m-%d", time.gmtime(now)), "set up NTP (systemd-timesyncd)")
    try:
        state = ctypes.CDLL(None).adjtimex(ctypes.create_string_buffer(512))  # modes 0: read only
    except (OSError, AttributeError):
        state = -1
    if state == 5:  # TIME_ERROR: the kernel says the clock is not synchronised
        return Check("clock", "warn", "not synchronised (adjtimex)", "enable NTP: systemd-timesyncd or chrony")
    if state < 0:
        return Check("clock", "warn", "synchronisation unknown", "check NTP (timedatectl)")
    return Check("clock", "ok", "synchronised (adjtimex)")


def _public_key(s: AgentSettings) -> Check:
    from contracts.signing import load_public_key

    path = s.resolved_public_key()
    if path is None:
        return Check("public key", "warn", "none set: bundle signatures are not checked", "set --public-key")
    try:
        trust = TrustedKeys(s.state_dir, load_public_key(path))
    except (EdgeloopError, OSError, ValueError) as exc:
        return Check("public key", "fail", f"{path}: {exc}", "copy edgeloop-signing.pub from the build side")
    rotated = f" (key set {trust.seq}, {trust.path.name})" if trust.seq else ""
    return Check("public key", "ok", f"{path}; trusts {', '.join(trust.ids)}{rotated}")


def _bundle(s: AgentSettings) -> Check:
    from contracts.bundle import load_bundle
    from contracts.runtime import OnnxModel
    from contracts.signing import load_public_key

    path = s.bundle
    pointer = Path(s.state_dir) / "current"  # the store's pointer file: the name of the bundle being served
    if path is None and pointer.is_file() and pointer.read_text().strip():
        path = Path(s.state_dir) / "bundles" / pointer.read_text().strip()
    if path is None:
        return Check("bundle", "warn", "no --bundle and nothing installed yet", "pass --bundle or deploy one")
    key_path = s.resolved_public_key()
    try:
        trust = TrustedKeys(s.state_dir, load_public_key(key_path)) if key_path else None
        key = None if trust is None else (trust.current() if s.bundle is not None else trust.installed())
        bundle = load_bundle(path, key, require_signature=key is not None)
        OnnxModel.load(bundle, intra_op_threads=1, runtime=s.runtime).check_golden_samples()
    except (EdgeloopError, OSError, ValueError) as exc:
        fix = "deploy a bundle signed by the key this device trusts (or fix --public-key)"
        return Check("bundle", "fail", f"{path}: {str(exc).splitlines()[0]}", fix)
    m = bundle.manifest
    signed = "signature and sha256" if key is not None else "sha256 only (no key)"
    return Check("bundle", "ok", f"{m.name} v{m.version} verifies ({signed}), {len(m.golden_samples)} golden samples")


def _broker(s: AgentSettings) -> Check:
    if not s.mqtt_url:
        return Check("broker", "ok", "offline agent (no mqtt_url): nothing to check")
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    url = urlsplit(s.mqtt_url)
    tls = url.scheme == "mqtts"
    host, port = url.hostname or "localhost", url.port or (8883 if tls else 1883)
    where = f"{host}:{port}" + (" (TLS)" if tls else "")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgeloop-doctor-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5)  # fmt: skip
    user = s.mqtt_username or url.username
    if user:
        client.username_pw_set(user, s.mqtt_password or url.password)
    done = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        result["connect"] = reason
        if reason.is_failure:
            done.set()
            return
        topics = [(group_desired(s.group), 1), (device_topic(s.device_id, "desired"), 1)]
        client.subscribe([*topics, (KEYS_TOPIC, 1)] if s.resolved_public_key() else topics)

    def on_subscribe(_c: Any, _u: Any, _mid: Any, reasons: Any, _p: Any) -> None:
        result["subscribe"] = reasons
        done.set()

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    try:
        if tls:
            ca, cert, key = (str(f) if f else None for f in (s.mqtt_ca_file, s.mqtt_cert_file, s.mqtt_key_file))
            client.tls_set(ca_certs=ca, certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
        client.connect(host, port, keepalive=10)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return Check("broker", "fail", f"{where}: {exc}", "start the broker, or fix mqtt_url / the TLS files")
    client.loop_start()
    try:
        done.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    connect = result.get("connect")
    if connect is None:
        return Check("broker", "fail", f"{where}: no CONNACK in 10 s", "check mqtt_url, the port and TLS")
    if connect.is_failure:
        return Check(
            "broker", "fail", f"{where}: {connect}", "check mqtt_username / mqtt_password and the broker's users"
        )
    refused = [str(r) for r in result.get("subscribe", []) if r.is_failure]
    if "subscribe" not in result or refused:
        return Check("broker", "fail", f"{where}: subscribe refused ({', '.join(refused) or 'no SUBACK'})",
                     "the broker's ACL must let this user read its group's and device's desired topics and "
                     f"{KEYS_TOPIC} (deploy/mosquitto/acl.head)")  # fmt: skip
    return Check("broker", "ok", f"{where}" + (f" as {user}" if user else "") + ", may subscribe to its desired states"
                 + (" and the key set" if s.resolved_public_key() else ""))  # fmt: skip


CHECKS: tuple[Callable[[AgentSettings], Check], ...] = (
    _platform, _python, _runtime, _state_dir, _clock, _public_key, _bundle, _broker,
)  # fmt: skip


def run_checks(settings: AgentSettings) -> list[Check]:
    """Every check, in order; one that raises unexpectedly is reported as its own failure, never a traceback."""
    results = []
    for check in CHECKS:
        try:
            results.append(check(settings))
        except Exception as exc:  # a doctor must finish its list
            name = check.__name__.strip("_").replace("_", " ")
            results.append(Check(name, "fail", f"{type(exc).__name__}: {exc}", "report it with this line"))
    return results

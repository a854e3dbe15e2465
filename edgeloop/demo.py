"""`edgeloop demo`: the whole loop on one machine, with nothing to set up.

sample data -> train rf (v1, champion) and gb (v2, challenger) in a private MLflow store -> convert both to
signed bundles -> a private Mosquitto on a free port -> the cloud service (API, dashboard, ingest, rollouts,
alerts; SQLite store) in this process -> three `edgeloop agent` subprocesses in group `plant-a` on v1 ->
traffic to each agent's REST API (gw-3 gets the drifted readings of `make_machines(drift=True)` and true
labels as feedback when the agent has `/v1/feedback`) -> v2 rolled out with gw-1 as the canary (the soak
keeps it in progress) -> the dashboard URL. Ctrl-C (or `--duration`) stops the traffic, the agents, the cloud
and the broker, in that order. Everything lives under the work directory (wiped at start).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from contracts.errors import InputError, ServiceUnavailableError
from contracts.logs import log_event

__all__ = ["Demo", "DemoOptions"]

logger = logging.getLogger("edgeloop.demo")
NAME = "machine-failure"
GROUP = "plant-a"
DEVICES = ("gw-1", "gw-2", "gw-3")
DRIFTED = "gw-3"
CANARY = "gw-1"
_MARKER = ".edgeloop-demo"


@dataclass
class DemoOptions:
    workdir: Path
    port: int = 8700
    duration: float | None = None
    """Seconds the fleet runs once everything is up; None = until Ctrl-C."""
    mqtt_url: str | None = None
    """An existing broker; default: a private Mosquitto on a free port."""
    telemetry_interval_s: float = 5.0
    soak_minutes: float = 30.0
    rows: int = 3000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise ServiceUnavailableError(f"{what} did not listen on port {port} within {timeout:g}s")


@dataclass
class Agent:
    device_id: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    sent: int = 0
    errors: int = 0
    feedback: int = 0


@dataclass
class Demo:
    options: DemoOptions
    say: Any = print
    """Where progress lines go (the CLI passes Rich's console.print)."""
    agents: list[Agent] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _broker: subprocess.Popen[bytes] | None = None
    _server: Any = None
    _server_thread: threading.Thread | None = None
    service: Any = None
    summary: dict[str, Any] = field(default_factory=dict)

    # -- the steps ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Everything, until `duration` passes or Ctrl-C; always stops what it started. Returns the summary."""
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:  # SIGINT too: a shell may have started us with it ignored
            signal.signal(sig, _raise_interrupt)
        try:
            self._prepare_workdir()
            v1, v2 = self._train_and_convert()
            mqtt_url = self._start_broker()
            self._start_cloud(mqtt_url, v1)
            self._start_agents(mqtt_url, v1)
            self._start_traffic()
            self._wait_for_fleet()
            rollout = self._roll_out(v2)
            self._explain(rollout)
            self._wait()
        except KeyboardInterrupt:
            self.say("\n[bold]stopping[/bold] (Ctrl-C)")
        finally:
            self.summary = self._summarize()
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.summary

    def _prepare_workdir(self) -> None:
        work = self.options.workdir
        if work.exists() and any(work.iterdir()):
            if not (work / _MARKER).exists():
                raise InputError(f"{work} is not empty and was not made by `edgeloop demo`; choose another --workdir")
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        (work / _MARKER).write_text("made by edgeloop demo; wiped at the next run\n")
        (work / "logs").mkdir()
        self.say(f"work directory [bold]{work}[/bold] (wiped at the next run)")

    def _train_and_convert(self) -> tuple[Path, Path]:
        from converter.convert import convert_model
        from converter.settings import ConvertSettings
        from trainer.sample_data import write_machines
        from trainer.settings import TrainSettings
        from trainer.train import train_model

        work = self.options.workdir
        data = write_machines(work / "machines.csv", rows=self.options.rows)
        self.say(f"1/6 sample data: {self.options.rows} machine readings -> {data}")
        tracking = f"sqlite:///{work / 'mlflow.db'}"
        train = TrainSettings(tracking_uri=tracking, artifact_root=work / "mlartifacts", keys_dir=work / "keys")
        convert = ConvertSettings(tracking_uri=tracking, keys_dir=work / "keys")
        bundles = []
        for step, kind in (("2/6", "rf"), ("3/6", "gb")):
            result = train_model(data, "failure_24h", NAME, kind, ["reading_id"], train)
            out = work / "bundles" / f"{NAME}-v{result.version}"
            convert_model(f"{NAME}/{result.version}", out, convert)
            metrics = " ".join(f"{k}={v:.3f}" for k, v in result.metrics.items() if k in ("accuracy", "f1", "roc_auc"))
            self.say(f"{step} trained {kind}: {NAME} v{result.version} @{result.alias} ({metrics}), bundle {out}")
            bundles.append(out)
        return bundles[0], bundles[1]

    def _start_broker(self) -> str:
        if self.options.mqtt_url:
            self.say(f"4/6 broker: {self.options.mqtt_url} (given)")
            return self.options.mqtt_url
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if binary is None:
            raise ServiceUnavailableError(
                "the demo needs an MQTT broker: install Mosquitto (apt-get install mosquitto, brew install mosquitto) "
                "or pass --mqtt-url mqtt://HOST:PORT of a running one"
            )
        port = free_port()
        folder = self.options.workdir / "mosquitto"
        folder.mkdir()
        config = folder / "mosquitto.conf"
        config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        log = (self.options.workdir / "logs" / "mosquitto.log").open("wb")
        self._broker = subprocess.Popen(
            [binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        _wait_port(port, 10, "mosquitto")
        self.say(f"4/6 broker: private Mosquitto ({binary}) on 127.0.0.1:{port}")
        return f"mqtt://127.0.0.1:{port}"

    def _start_cloud(self, mqtt_url: str, v1: Path) -> None:
        import uvicorn

        from cloud_sync.service import CloudService
        from cloud_sync.settings import CloudSettings

        work = self.options.workdir
        settings = CloudSettings(
            port=self.options.port,
            mqtt_url=mqtt_url,
            store_url=f"sqlite:///{work / 'cloud.db'}",
            bundles_dir=work / "cloud-bundles",
            keys_dir=work / "keys",
            online_timeout_s=30,
            alert_tick_s=2,
            rollout_tick_s=1,
            ingest_client_id=f"edgeloop-demo-ingest-{os.getpid()}",
            viewer_tokens=[],
            operator_tokens=[],
        )
        self.service = CloudService(settings)
        self.service.registry.add(v1)
        config = uvicorn.Config(
            self.service.create_app(),
            host="127.0.0.1",
            port=self.options.port,
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=3,
        )
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # Ctrl-C is ours: stop everything in order
        self._server_thread = threading.Thread(target=self._server.run, name="edgeloop-demo-cloud", daemon=True)
        self._server_thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._server_thread.is_alive():
                raise ServiceUnavailableError(f"the cloud did not start on port {self.options.port} (is it in use?)")
            time.sleep(0.05)
        self.say(f"5/6 cloud: API, dashboard, ingest, rollouts and alerts on {self.url} (SQLite {work / 'cloud.db'})")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.options.port}"

    def _start_agents(self, mqtt_url: str, v1: Path) -> None:
        work = self.options.workdir
        telemetry = _agent_telemetry_flag()
        interval = f"{self.options.telemetry_interval_s:g}"
        env = {**os.environ, "EDGELOOP_HOME": str(work)}
        env.update({f"EDGELOOP_AGENT_TELEMETRY_INTERVAL{suffix}": interval for suffix in ("", "_S")})
        for device in DEVICES:
            port = free_port()
            command = [
                sys.executable, "-m", "edgeloop", "agent",
                "--state-dir", str(work / "agents" / device),
                "--device-id", device,
                "--group", GROUP,
                "--mqtt-url", mqtt_url,
                "--public-key", str(work / "keys" / "edgeloop-signing.pub"),
                "--bundle", str(v1),
                "--port", str(port),
            ]  # fmt: skip
            if telemetry:
                command += [telemetry, interval]
            log = work / "logs" / f"{device}.log"
            with log.open("wb") as handle:
                # Own session: Ctrl-C reaches the demo only, which stops agents before the cloud and broker.
                process = subprocess.Popen(
                    command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            self.agents.append(Agent(device, port, process, log))
        for agent in self.agents:
            deadline = time.monotonic() + 30
            while True:
                if agent.process.poll() is not None:
                    tail = agent.log.read_text()[-600:]
                    raise ServiceUnavailableError(f"agent {agent.device_id} exited at start: {tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{agent.port}/readyz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise ServiceUnavailableError(f"agent {agent.device_id} not ready in 30s; see {agent.log}")
                time.sleep(0.1)
        ports = ", ".join(f"{a.device_id} :{a.port}" for a in self.agents)
        note = f"telemetry every {interval}s"
        self.say(f"6/6 agents: {ports} in group {GROUP}, serving {NAME} v1 ({note}; logs in {work / 'logs'})")
        if not telemetry:
            self.say(
                "[yellow]note:[/yellow] this `edgeloop agent` has no --telemetry-interval option: the interval is set "
                "through EDGELOOP_AGENT_TELEMETRY_INTERVAL(_S)"
            )

    def _start_traffic(self) -> None:
        from trainer.sample_data import make_machines

        normal = make_machines(rows=4000, seed=11)
        drifted = make_machines(rows=4000, seed=11, drift=True)
        for index, agent in enumerate(self.agents):
            frame = drifted if agent.device_id == DRIFTED else normal.iloc[index * 1000 :]
            thread = threading.Thread(
                target=self._traffic, args=(agent, frame), name=f"traffic-{agent.device_id}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self.say(f"traffic: batches of 8 readings to each agent's POST /v1/predict; {DRIFTED} gets drifted readings")

    def _traffic(self, agent: Agent, frame: Any) -> None:
        import numpy as np

        features = frame.drop(columns=["failure_24h", "reading_id"], errors="ignore")
        records = json.loads(features.to_json(orient="records"))
        labels = frame["failure_24h"].tolist()
        base = f"http://127.0.0.1:{agent.port}"
        feedback_field = _feedback_field(base) if agent.device_id == DRIFTED else None
        rng = np.random.default_rng(len(agent.device_id))
        position = 0
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                batch = records[position : position + 8]
                truth = labels[position : position + 8]
                position = (position + 8) % (len(records) - 8)
                try:
                    response = client.post(f"{base}/v1/predict", json={"records": batch})
                    agent.sent += len(batch)
                    if response.status_code != 200:
                        agent.errors += 1
                    elif feedback_field is not None:
                        for prediction, label in zip(response.json()["predictions"], truth, strict=False):
                            if rng.random() < 0.5:
                                body = {"prediction_id": prediction["prediction_id"], feedback_field: label}
                                if client.post(f"{base}/v1/feedback", json=body).status_code < 300:
                                    agent.feedback += 1
                except httpx.HTTPError:
                    agent.errors += 1
                self._stop.wait(0.1)

    def _wait_for_fleet(self) -> None:
        from cloud_sync.fleet import device_list

        deadline = time.monotonic() + 30
        while len(device_list(self.service.store, GROUP)) < len(DEVICES):
            if time.monotonic() > deadline:
                raise ServiceUnavailableError("the agents did not report to the cloud within 30s (see the logs)")
            time.sleep(0.2)

    def _roll_out(self, v2: Path) -> dict[str, Any]:
        info = self.service.registry.add(v2)
        body = {
            "model_name": info.name,
            "model_version": info.version,
            "group": GROUP,
            "canary": CANARY,
            "soak_minutes": self.options.soak_minutes,
        }
        response = httpx.post(f"{self.url}/v1/rollouts", json=body, timeout=30)
        if response.status_code >= 300:
            raise ServiceUnavailableError(f"the rollout was refused: HTTP {response.status_code} {response.text}")
        rollout: dict[str, Any] = response.json()
        self.say(
            f"rollout [bold]{rollout['id']}[/bold]: {NAME} v{info.version} (gb) to {CANARY} first, "
            f"soak {self.options.soak_minutes:g} min, then the whole group (or an automatic rollback)"
        )
        return rollout

    def _explain(self, rollout: dict[str, Any]) -> None:
        self.say(
            f"\n[bold green]dashboard: {self.url}/[/bold green]\n"
            f"  Fleet     three live devices; {DRIFTED} turns red/amber once its first windows land (PSI > 0.25 on "
            "temperature_c and vibration_mm_s: a heat wave and worn bearings)\n"
            f"  Device    click {DRIFTED}: reference vs current histograms, PSI per feature over time, events\n"
            f"  Rollouts  {rollout['id']} in progress: {CANARY} on v2 while it soaks; Promote or Roll back there\n"
            "  Models    v1 (rf) and v2 (gb): held-out metrics, lineage, model card, where each runs\n"
            "  Alerts    the drift alert on gw-3; Acknowledge it\n"
            f"  API docs  {self.url}/docs\n"
            + (
                f"runs for {self.options.duration:g}s"
                if self.options.duration
                else "Ctrl-C stops everything (agents, cloud, broker)"
            )
        )

    def _wait(self) -> None:
        end = None if self.options.duration is None else time.monotonic() + self.options.duration
        while end is None or time.monotonic() < end:
            time.sleep(0.5 if end is None else max(0.0, min(0.5, end - time.monotonic())))
            for agent in self.agents:
                if agent.process.poll() is not None:
                    raise ServiceUnavailableError(f"agent {agent.device_id} stopped; see {agent.log}")

    # -- the end ------------------------------------------------------------------------------------
    def _summarize(self) -> dict[str, Any]:
        if self.service is None or self._server is None or not self._server.started:
            return {}
        summary: dict[str, Any] = {"dashboard": f"{self.url}/", "workdir": str(self.options.workdir)}
        with contextlib.suppress(httpx.HTTPError, ValueError):
            overview = httpx.get(f"{self.url}/v1/dashboard/overview?since=1h", timeout=10).json()
            summary["devices"] = overview["devices"]
            summary["rollouts"] = httpx.get(f"{self.url}/v1/rollouts", timeout=10).json()
            summary["alerts"] = httpx.get(f"{self.url}/v1/alerts?state=firing", timeout=10).json()
        summary["agents"] = {
            a.device_id: {"port": a.port, "records": a.sent, "errors": a.errors, "feedback": a.feedback}
            for a in self.agents
        }
        (self.options.workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        for row in summary.get("devices", []):
            drift = row["worst_drift"]
            self.say(
                f"  {row['device_id']}: {'online' if row['online'] else 'offline'}, {row['model_name']} "
                f"v{row['model_version']}, {row['windows']} windows, {row['requests']} requests, worst PSI "
                + (f"{drift['psi']:.3f} on {drift['feature']} ({drift['band']})" if drift else "-")
            )
        for rollout in summary.get("rollouts", [])[:1]:
            self.say(f"  rollout {rollout['id']}: {rollout['model']} {rollout['state']}")
        return summary

    def stop(self) -> None:
        """Traffic, then agents (SIGTERM: they publish offline), then the cloud, then the broker."""
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for agent in self.agents:
            if agent.process.poll() is None:
                agent.process.terminate()
        for agent in self.agents:
            try:
                agent.process.wait(15)
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait(5)
        if self._server is not None:
            self._server.should_exit = True
        if self._server_thread is not None:
            self._server_thread.join(15)
        if self._broker is not None and self._broker.poll() is None:
            self._broker.terminate()
            try:
                self._broker.wait(10)
            except subprocess.TimeoutExpired:
                self._broker.kill()
        log_event(logger, "demo stopped", workdir=str(self.options.workdir))
        self.say("stopped: agents, cloud and broker")


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _agent_telemetry_flag() -> str | None:
    """`--telemetry-interval` (or a close name) when this edge agent has one."""
    result = subprocess.run(
        [sys.executable, "-m", "edgeloop", "agent", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        timeout=60,
    )
    for flag in ("--telemetry-interval-s", "--telemetry-interval"):
        if flag + " " in result.stdout:
            return flag
    return None


def _feedback_field(base: str) -> str | None:
    """The agent's feedback route, if it has one: the name of the true-label field in its request body."""
    try:
        spec = httpx.get(f"{base}/openapi.json", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    operation = spec.get("paths", {}).get("/v1/feedback", {}).get("post")
    if operation is None:
        return None
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if "$ref" in schema:
        schema = spec.get("components", {}).get("schemas", {}).get(schema["$ref"].rsplit("/", 1)[-1], {})
    fields = [name for name in schema.get("properties", {}) if name != "prediction_id"]
    for name in ("actual", "label", "true_label", "outcome", "value"):
        if name in fields:
            return name
    return fields[0] if len(fields) == 1 else None

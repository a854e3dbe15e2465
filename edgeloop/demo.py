"""`edgeloop demo`: the whole loop on one machine, with nothing to set up.

sample data -> train rf (v1, champion) in a private MLflow store -> convert it to a signed bundle -> a
retraining policy (trigger: the feature-drift alert; data: the original rows plus the feedback rows devices
sent to the cloud; result: a shadow canary on gw-3 with a short soak) -> a private Mosquitto on a free port
-> the cloud service (API, dashboard, ingest, rollouts, alerts, retrain triggers; SQLite store) in this
process -> three `edgeloop agent` subprocesses in group `plant-a` on v1, feedback rows on -> traffic to each
agent's REST API; gw-3 gets the drifted readings of `make_machines(drift=True)` and their true labels as
feedback. Then the loop closes by itself, and the demo follows it through the cloud's API: the drift alert
fires on gw-3, the cloud starts `edgeloop retrain` (a challenger trained on the original rows plus gw-3's
feedback rows), the challenger runs in shadow beside the champion on gw-3, and after the soak the rollout
controller compares their accuracy on the same feedback and promotes the challenger to the group (or rolls
it back). The demo prints each step, then the audit log. It stops at Ctrl-C, or once `--duration` has
passed and the loop has ended (closed, failed, or `loop_timeout_s` after the fleet came up): the traffic,
the agents, the cloud and the broker, in that order. Everything lives under the work directory (wiped at
start).
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
CANARY = DRIFTED
"""The shadow canary is the device whose feedback measures both models."""
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
    soak_minutes: float = 0.25
    """Soak of the shadow canary before the accuracies are compared."""
    min_labels: int = 400
    """Labels each model needs on the canary before the controller decides (cloud `rollout_min_samples`)."""
    challenger_model: str = "logreg"
    """Estimator family of the retrained challenger (the policy's `train.model`)."""
    loop_timeout_s: float = 600.0
    """With a duration: how long after the fleet is up the demo waits at most for the loop to end (the retraining
    job's train and convert took 5 minutes on a shared 2-core machine at load 16, 1 minute when idle)."""
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
    loop: dict[str, Any] = field(default_factory=dict)
    """What the demo saw of the loop: alert, retrain, rollout, outcome (`closed`, `failed` or absent)."""
    _audit_seen: int = 0
    healthy_looks: int = 0
    """Looks at the dashboard's fleet table while the demo ran (about one a second)."""
    healthy_drift: list[dict[str, Any]] = field(default_factory=list)
    """Drift verdicts seen on a device that never drifted (gw-1, gw-2): the demo's promise is none."""

    # -- the steps ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Everything, until `duration` passes or Ctrl-C; always stops what it started. Returns the summary."""
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:  # SIGINT too: a shell may have started us with it ignored
            signal.signal(sig, _raise_interrupt)
        home = os.environ.get("EDGELOOP_HOME")
        try:
            self._prepare_workdir()
            # The retraining job the cloud starts signs with the fleet's key and writes under the work directory.
            os.environ["EDGELOOP_HOME"] = str(self.options.workdir)
            v1 = self._train_and_convert()
            policy = self._write_policy()
            mqtt_url = self._start_broker()
            self._start_cloud(mqtt_url, v1, policy)
            self._start_agents(mqtt_url, v1)
            self._start_traffic()
            self._wait_for_fleet()
            self._explain()
            self._wait()
        except KeyboardInterrupt:
            self.say("\n[bold]stopping[/bold] (Ctrl-C)")
        finally:
            self.summary = self._summarize()
            self.stop()
            if home is None:
                os.environ.pop("EDGELOOP_HOME", None)
            else:
                os.environ["EDGELOOP_HOME"] = home
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

    def _train_and_convert(self) -> Path:
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
        result = train_model(data, "failure_24h", NAME, "rf", ["reading_id"], train)
        out = work / "bundles" / f"{NAME}-v{result.version}"
        convert_model(f"{NAME}/{result.version}", out, convert)
        metrics = " ".join(f"{k}={v:.3f}" for k, v in result.metrics.items() if k in ("accuracy", "f1", "roc_auc"))
        self.say(f"2/6 trained rf: {NAME} v{result.version} @{result.alias} ({metrics}), bundle {out}")
        return out

    def _write_policy(self) -> Path:
        """The retraining policy `edgeloop cloud` runs on its own (docs/loop.md, "Retraining")."""
        import yaml

        work, opts = self.options.workdir, self.options
        policy = {
            "model": NAME,
            "triggers": ["manual", {"alert": "feature-drift"}],
            "data": {
                "original": str(work / "machines.csv"),
                "target": "failure_24h",
                "ignore": ["reading_id"],
                "feedback_source": "cloud",
                "feedback_max_rows": 20000,
            },
            "train": {"model": opts.challenger_model},
            "result": {"deploy": "shadow-canary", "group": GROUP, "canary": CANARY, "soak_minutes": opts.soak_minutes},
        }
        path = work / "retrain.yaml"
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        self.say(
            f"3/6 retraining policy {path}: on the feature-drift alert, train {opts.challenger_model} on the original "
            f"rows + the devices' feedback rows, shadow canary on {CANARY} (soak {opts.soak_minutes:g} min, "
            f"{opts.min_labels} labels), promoted if at least as accurate"
        )
        return path

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

    def _start_cloud(self, mqtt_url: str, v1: Path, policy: Path) -> None:
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
            rollout_min_samples=self.options.min_labels,
            retrain_policies=[policy],
            retrain_tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
            retrain_workdir=work / "retrain",
            retrain_tick_s=1,
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
        self.say(
            f"5/6 cloud: API, dashboard, ingest, rollouts, alerts and retrain triggers on {self.url} "
            f"(SQLite {work / 'cloud.db'})"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.options.port}"

    def _start_agents(self, mqtt_url: str, v1: Path) -> None:
        work = self.options.workdir
        telemetry = _agent_telemetry_flag()
        interval = f"{self.options.telemetry_interval_s:g}"
        env = {**os.environ, "EDGELOOP_HOME": str(work)}
        env.update({f"EDGELOOP_AGENT_TELEMETRY_INTERVAL{suffix}": interval for suffix in ("", "_S")})
        # Labelled predictions go to the cloud with their features, for retraining (opt-in on a real fleet).
        env.update({"EDGELOOP_AGENT_FEEDBACK_ROWS": "true", "EDGELOOP_AGENT_FEEDBACK_ROWS_MAX_PER_HOUR": "100000"})
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
        note = f"telemetry every {interval}s, feedback rows on"
        self.say(f"6/6 agents: {ports} in group {GROUP}, serving {NAME} v1 ({note}; logs in {work / 'logs'})")
        if not telemetry:
            self.say(
                "[yellow]note:[/yellow] this `edgeloop agent` has no --telemetry-interval option: the interval is set "
                "through EDGELOOP_AGENT_TELEMETRY_INTERVAL(_S)"
            )

    def _start_traffic(self) -> None:
        from trainer.sample_data import make_machines

        normal = make_machines(rows=4000, seed=11)
        # Never the same reading twice in a run: the challenger is judged on readings it was not trained on.
        drifted = make_machines(rows=40000, seed=11, drift=True)
        for index, agent in enumerate(self.agents):
            frame = drifted if agent.device_id == DRIFTED else normal.iloc[index * 1000 :]
            thread = threading.Thread(
                target=self._traffic, args=(agent, frame), name=f"traffic-{agent.device_id}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self.say(
            f"traffic: batches of 8 readings to each agent's POST /v1/predict; {DRIFTED} gets drifted readings "
            "and their true labels on POST /v1/feedback"
        )

    def _traffic(self, agent: Agent, frame: Any) -> None:
        features = frame.drop(columns=["failure_24h", "reading_id"], errors="ignore")
        records = json.loads(features.to_json(orient="records"))
        labels = frame["failure_24h"].tolist()
        base = f"http://127.0.0.1:{agent.port}"
        feedback = agent.device_id == DRIFTED
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
                    elif feedback:  # every reading's true label, in one feedback batch
                        items = [
                            {"prediction_id": prediction["prediction_id"], "label": label}
                            for prediction, label in zip(response.json()["predictions"], truth, strict=True)
                        ]
                        answer = client.post(f"{base}/v1/feedback", json={"feedback": items})
                        if answer.status_code != 200:
                            agent.errors += 1
                        else:
                            agent.feedback += int(answer.json()["accepted"])
                except httpx.HTTPError:
                    agent.errors += 1
                self._stop.wait(0.1)

    def _wait_for_fleet(self) -> None:
        from cloud_sync.fleet.stats import device_list

        deadline = time.monotonic() + 30
        while len(device_list(self.service.store, GROUP)) < len(DEVICES):
            if time.monotonic() > deadline:
                raise ServiceUnavailableError("the agents did not report to the cloud within 30s (see the logs)")
            time.sleep(0.2)

    def _explain(self) -> None:
        self.say(
            f"\n[bold green]dashboard: {self.url}/[/bold green]\n"
            f"  Fleet     three live devices; {DRIFTED} turns red/amber once its first windows land (PSI > 0.25 on "
            "temperature_c and vibration_mm_s: a heat wave and worn bearings)\n"
            f"  Device    click {DRIFTED}: reference vs current histograms, PSI per feature over time, events\n"
            "  Alerts    the drift alert on gw-3 (it starts the retrain); Acknowledge it\n"
            f"  Rollouts  the shadow canary: {CANARY} serves v1 with the challenger in shadow, then promoted or rolled "
            "back on measured accuracy\n"
            "  Models    v1 (rf) and the challenger: held-out metrics, lineage (with the feedback data), model card\n"
            "  Audit     retrain triggered -> retrain -> deploy -> promote, with both accuracies\n"
            f"  API docs  {self.url}/docs\n"
            + (
                f"runs for {self.options.duration:g}s and until the loop has ended "
                f"(at most {self.options.loop_timeout_s:g}s)"
                if self.options.duration
                else "Ctrl-C stops everything (agents, cloud, broker)"
            )
            + "\n\nthe loop:"
        )

    def _wait(self) -> None:
        started = time.monotonic()
        end = None if self.options.duration is None else started + self.options.duration
        give_up = started + self.options.loop_timeout_s
        next_check = 0.0
        while True:
            now = time.monotonic()
            if end is not None and now >= end and ((self._ended() and self._settled(now)) or now >= give_up):
                break
            time.sleep(0.5)
            for agent in self.agents:
                if agent.process.poll() is not None:
                    raise ServiceUnavailableError(f"agent {agent.device_id} stopped; see {agent.log}")
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    self._watch_healthy()
                    if "outcome" not in self.loop:
                        self._follow_loop()
        if "outcome" not in self.loop:
            self.say(
                f"[yellow]loop not closed[/yellow] after {time.monotonic() - started:.0f}s: "
                f"{self.loop.get('step', 'waiting for the drift alert')}"
            )

    def _ended(self) -> bool:
        return "outcome" in self.loop

    def _settled(self, now: float) -> bool:
        """After an accepted drift, until the drifted device's baseline has formed (at most a minute): the end
        then shows it judged against its baseline."""
        if self.loop.get("outcome") != "closed":
            return True
        closed = self.loop.setdefault("closed_at", now)
        return (self.loop.get("baseline") or {}).get("state") == "ready" or now - closed >= 60

    def _watch_healthy(self) -> None:
        """One look at the dashboard's fleet table: a device that never drifted must never show a drift verdict."""
        overview = httpx.get(f"{self.url}/v1/dashboard/overview", params={"since": "15m"}, timeout=10).json()
        self.healthy_looks += 1
        for row in overview["devices"]:
            worst = row.get("worst_drift") or {}
            if row["device_id"] == DRIFTED and row.get("baseline") and "outcome" in self.loop:
                if row["baseline"]["state"] == "ready" and (self.loop.get("baseline") or {}).get("state") != "ready":
                    self.say(f"  {DRIFTED}'s baseline formed: {row['baseline']['records']} records on v2")
                self.loop["baseline"] = row["baseline"]
            if row["device_id"] != DRIFTED and worst.get("drifted"):
                self.healthy_drift.append({"device": row["device_id"], "model_version": row["model_version"], **worst})
                self.say(f"  [red]{row['device_id']} shows drift[/red]: {worst['feature']} ({_evidence(worst)})")

    def _follow_loop(self) -> None:
        """One look at the cloud's API (what the dashboard shows): say each new step of the loop."""
        loop = self.loop
        if "alert" not in loop:
            firing = httpx.get(f"{self.url}/v1/alerts", params={"state": "firing"}, timeout=10).json()
            drift = [a for a in firing if a["rule"] == "feature-drift" and a["subject"].startswith(DRIFTED)]
            if drift:
                loop["alert"] = drift[0]
                loop["step"] = "drift alert fired, waiting for the retrain"
                self.say(f"  drift alert: feature-drift fired on {drift[0]['subject']} ({drift[0]['message']})")
        entries = httpx.get(f"{self.url}/v1/audit", timeout=10).json()
        for entry in entries[self._audit_seen :]:
            self._audit_step(entry)
            if "outcome" in loop:
                self._print_audit()
                break
        self._audit_seen = len(entries)

    def _audit_step(self, entry: dict[str, Any]) -> None:
        loop, action, details = self.loop, entry["action"], entry.get("details") or {}
        if action == "retrain triggered":
            loop["retrain_triggered"] = entry
            loop["step"] = "retrain running"
            self.say(f"  retrain started by the cloud ({details.get('trigger')}): log {details.get('log')}")
        elif action == "retrain":
            loop["retrain"] = entry
            loop["step"] = "challenger registered, converting and deploying"
            parts = (details.get("mixture") or {}).get("parts") or []
            mixture = ", ".join(f"{p['source']} {p['kept']} of {p['received']} ({p['share']:.1%})" for p in parts)
            self.say(
                f"  retrain recorded: {entry['target']} trained on the original rows + "
                f"{details.get('feedback_rows')} feedback rows from the devices (deploy: {details.get('deploy')}; "
                f"mixture: {mixture or 'not stated'})"
            )
        elif action == "deploy" and loop.get("retrain"):
            loop["deploy"] = entry
            loop["step"] = "challenger in shadow on the canary, soaking"
            self.say(f"  shadow canary: {entry['reason'] or entry['target']}")
        elif action == "retrain failed":
            loop["outcome"] = "failed"
            self.say(f"  [red]retrain failed[/red]: {entry['reason']} (log {details.get('log')})")
        elif action in ("promote", "rollback", "rollback failed") and loop.get("deploy"):
            challenger, champion = details.get("challenger_accuracy"), details.get("champion_accuracy")
            version = entry["target"].split()[0].rsplit("/", 1)[-1]
            loop.update(decision=entry, challenger_accuracy=challenger, champion_accuracy=champion)
            if action == "promote" and challenger is not None and champion is not None:
                loop["step"] = "promoted on measured accuracy, waiting for the cloud to accept gw-3's drift"
                loop["closing"] = (
                    f"[bold green]loop closed:[/bold green] challenger v{version} promoted after shadow accuracy "
                    f"{challenger:.3f} vs champion {champion:.3f} ({details.get('challenger_labels')} and "
                    f"{details.get('labels')} labels on {', '.join(details.get('canary') or [])}); "
                    f"{GROUP} now serves v{version}"
                )
                self.say(f"  promoted: {entry['reason']}")
            elif action == "promote":
                loop["outcome"] = "closed"
                self.say(f"[bold green]loop closed:[/bold green] challenger v{version} promoted by {entry['actor']}")
            else:
                loop["outcome"] = "failed"
                self.say(f"  [yellow]challenger v{version} rolled back[/yellow]: {entry['reason']}")
        elif action == "accept drift" and loop.get("closing") and entry["target"] == DRIFTED:
            loop["accepted"] = entry
            loop["outcome"] = "closed"
            resolved = len(details.get("resolved_alerts") or [])
            self.say(f"  drift on {DRIFTED} accepted, {resolved} alert(s) resolved: {entry['reason']}")
            self.say(f"{loop['closing']}; {DRIFTED} is judged against its own baseline from now on")

    def _print_audit(self) -> None:
        entries = httpx.get(f"{self.url}/v1/audit", timeout=10).json()
        self.say(f"audit log ({self.url}/v1/audit):")
        for entry in entries:
            reason = f": {entry['reason']}" if entry.get("reason") else ""
            self.say(f"  {entry['at']}  {entry['actor']:<10} {entry['action']:<17} {entry['target']}{reason}")

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
            summary["resolved_alerts"] = httpx.get(f"{self.url}/v1/alerts?state=resolved", timeout=10).json()
            summary["audit"] = httpx.get(f"{self.url}/v1/audit", timeout=10).json()
        summary["loop"] = {key: value for key, value in self.loop.items() if key != "step"}
        summary["agents"] = {
            a.device_id: {"port": a.port, "records": a.sent, "errors": a.errors, "feedback": a.feedback}
            for a in self.agents
        }
        summary["healthy_drift"] = {"looks": self.healthy_looks, "drifted": self.healthy_drift}
        (self.options.workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        for row in summary.get("devices", []):
            drift = row["worst_drift"]
            self.say(
                f"  {row['device_id']}: {'online' if row['online'] else 'offline'}, {row['model_name']} "
                f"v{row['model_version']}, {row['windows']} windows, {row['requests']} requests, worst PSI "
                + (f"{drift['psi']:.3f} on {drift['feature']} ({_evidence(drift)})" if drift else "-")
            )
        for rollout in summary.get("rollouts", [])[:1]:
            self.say(f"  rollout {rollout['id']}: {rollout['model']} ({rollout['mode']}) {rollout['state']}")
        healthy = ", ".join(d for d in DEVICES if d != DRIFTED)
        self.say(
            f"  {healthy}: no drift verdict in {self.healthy_looks} looks at the dashboard"
            if not self.healthy_drift
            else f"  [red]{healthy}: a drift verdict {len(self.healthy_drift)} time(s)[/red] (summary.json)"
        )
        firing = summary.get("alerts", [])
        self.say(
            "  alerts firing: " + ("none" if not firing else "; ".join(f"{a['rule']} {a['subject']}" for a in firing))
        )
        for alert in summary.get("resolved_alerts", []):
            why = alert.get("resolution") or "its breach ended"
            self.say(f"  resolved: {alert['rule']} {alert['subject']} ({why})")
        return summary

    def stop(self) -> None:
        """Traffic, then agents (SIGTERM: they publish offline), then the cloud, then the broker."""
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._stop_jobs()
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

    def _stop_jobs(self) -> None:
        """A retraining job the cloud started that is still running (Ctrl-C, or the loop cut short): the job and
        the trainer or converter it runs, so nothing outlives the demo."""
        import psutil

        ours = {agent.process.pid for agent in self.agents} | ({self._broker.pid} if self._broker else set())
        with contextlib.suppress(psutil.Error):
            jobs = [child for child in psutil.Process().children() if child.pid not in ours]
            processes = [grandchild for job in jobs for grandchild in job.children(recursive=True)] + jobs
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    process.terminate()
            _, alive = psutil.wait_procs(processes, timeout=10)
            for process in alive:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            if jobs:
                self.say(f"stopped {len(jobs)} retraining job(s) still running")


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


def _evidence(drift: dict[str, Any]) -> str:
    """`significant, p=3e-12 on 420 records: drifted` (docs/loop.md: effect and evidence)."""
    if drift.get("p_value") is None:
        return f"{drift['band']}, too few records to test"
    verdict = "drifted" if drift.get("drifted") else "not drifted"
    against = ", against its baseline" if drift.get("reference") == "baseline" else ""
    return f"{drift['band']}, p={drift['p_value']:.2g} on {drift['count']} records{against}: {verdict}"

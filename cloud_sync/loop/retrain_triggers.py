"""Retraining on triggers, inside `edgeloop cloud`: a retraining policy (docs/loop.md) fires on an alert
(`{alert: feature-drift}`: a new firing of that rule on a device running the policy's model) or on a
schedule (`{schedule: 7d}`, counted from the service's start), and the job runs as a separate process,
exactly as by hand: `edgeloop retrain NAME --policy FILE --trigger alert:RULE --cloud-url THIS_CLOUD`. The job
registers the challenger, records itself (`retrain`) and, when the policy says `deploy: canary`, converts
the challenger and rolls it out to the group's canary.

The controller records `retrain triggered`, then `retrain finished` or `retrain failed` (exit code and the
job's last error line) in the audit log. One job per policy at a time, and none within `cooldown_s` of the
previous start (a drifting device fires one alert per feature). The operator token the job uses is passed
in its environment (never on its command line). Only `model` and `triggers` of a policy are read here; the
rest is the job's business (no import of the CLI or the trainer).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
import yaml

from cloud_sync.store import audit
from cloud_sync.store.db import Store, alerts, devices
from cloud_sync.times import parse_duration
from contracts.errors import InputError
from contracts.extras import missing_extra
from contracts.logs import log_event

__all__ = ["PolicyTriggers", "RetrainTriggers", "load_policy_triggers"]

logger = logging.getLogger("edgeloop.cloud.retrain")


@dataclass
class PolicyTriggers:
    path: Path
    model: str
    alerts: set[str] = field(default_factory=set)
    schedule_s: float | None = None


def load_policy_triggers(paths: list[Path]) -> list[PolicyTriggers]:
    """The model and triggers of each retraining policy file (the job itself reads the rest)."""
    found = []
    for path in paths:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise InputError(f"cannot read retraining policy {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise InputError(f"retraining policy {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), str):
            raise InputError(f"retraining policy {path}: `model` (the registered model name) is required")
        policy = PolicyTriggers(Path(path).resolve(), raw["model"])
        for trigger in raw.get("triggers") or ["manual"]:
            if trigger == "manual":
                continue
            if isinstance(trigger, dict) and isinstance(trigger.get("alert"), str):
                policy.alerts.add(trigger["alert"])
            elif isinstance(trigger, dict) and "schedule" in trigger:
                try:
                    policy.schedule_s = parse_duration(trigger["schedule"])
                except ValueError as exc:
                    raise InputError(f"retraining policy {path}: schedule: {exc}") from None
            else:
                raise InputError(f"retraining policy {path}: trigger {trigger!r} is not manual, {{alert: RULE}} "
                                 "or {schedule: DURATION}")  # fmt: skip
        found.append(policy)
    return found


@dataclass
class _Job:
    process: subprocess.Popen[bytes]
    trigger: str
    log_path: Path
    log: IO[bytes]
    started: float


class RetrainTriggers:
    def __init__(
        self,
        store: Store,
        policies: list[PolicyTriggers],
        cloud_url: str,
        token: str | None,
        workdir: Path,
        tracking_uri: str | None = None,
        cooldown_s: float = 3600.0,
    ) -> None:
        self.store = store
        self.policies = policies
        self.cloud_url = cloud_url
        self.token = token
        self.workdir = workdir
        self.tracking_uri = tracking_uri
        self.cooldown_s = cooldown_s
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._last_start: dict[str, float] = {}
        started = time.time()
        self._next_schedule = {p.model: started + p.schedule_s for p in policies if p.schedule_s}
        with store.engine.connect() as conn:  # alerts that fired before the start are not triggers
            self._last_alert_id = int(conn.execute(sa.select(sa.func.max(alerts.c.id))).scalar() or 0)
        if policies and importlib.util.find_spec("mlflow") is None:  # a cloud-only install: say it at start
            missing = missing_extra(ModuleNotFoundError(name="mlflow"), "retraining (retrain_policies)")
            log_event(logger, "retrain jobs will fail", level=logging.WARNING, reason=str(missing))

    def run(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.wait(interval_s):
            try:
                self.tick()
            except Exception:
                logger.exception("retrain trigger check failed")
        with self._lock:
            for job in self._jobs.values():
                job.log.close()

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._reap()
        for alert in self._new_firings():
            for policy in self.policies:
                if alert["rule"] in policy.alerts and self._runs_model(alert["subject"], policy.model):
                    reason = f"alert {alert['rule']} fired on {alert['subject']} ({alert['message']})"
                    self.fire(policy, f"alert:{alert['rule']}", reason, {"alert_id": alert["id"]}, now)
        for policy in self.policies:
            due = self._next_schedule.get(policy.model)
            if due is not None and now >= due and policy.schedule_s:
                self._next_schedule[policy.model] = now + policy.schedule_s
                self.fire(policy, "schedule", f"every {policy.schedule_s:g}s", {}, now)

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._jobs)

    def fire(self, policy: PolicyTriggers, trigger: str, reason: str, details: dict[str, Any], now: float) -> bool:
        """Start the policy's job unless one is running or one started within the cooldown."""
        with self._lock:
            if policy.model in self._jobs:
                log_event(logger, "retrain already running", model=policy.model, trigger=trigger)
                return False
            last = self._last_start.get(policy.model)
            if last is not None and now - last < self.cooldown_s:
                log_event(logger, "retrain in cooldown", model=policy.model, trigger=trigger)
                return False
            workdir = self.workdir / policy.model
            workdir.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "edgeloop", "retrain", policy.model, "--policy", str(policy.path)]
            command += ["--trigger", trigger, "--reason", reason, "--workdir", str(workdir)]
            command += ["--cloud-url", self.cloud_url]
            if self.tracking_uri:
                command += ["--tracking-uri", self.tracking_uri]
            env = os.environ.copy()
            env.pop("EDGELOOP_CLOUD_TOKEN", None)
            if self.token:
                env["EDGELOOP_CLOUD_TOKEN"] = self.token
            log_path = workdir / f"retrain-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}.log"
            log = log_path.open("ab")
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            self._jobs[policy.model] = _Job(process, trigger, log_path, log, now)
            self._last_start[policy.model] = now
        with self.store.begin() as conn:
            audit.record(conn, "controller", "retrain triggered", target=policy.model, reason=reason,
                         details={"trigger": trigger, "policy": str(policy.path), "pid": process.pid,
                          "log": str(log_path), **details})  # fmt: skip
        log_event(logger, "retrain triggered", model=policy.model, trigger=trigger, pid=process.pid)
        return True

    def wait(self, timeout: float) -> bool:
        """Wait for the running jobs to end (tests, shutdown); True when none is left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap()
            if not self.running():
                return True
            time.sleep(0.1)
        return False

    def _reap(self) -> None:
        with self._lock:
            finished = [(model, job) for model, job in self._jobs.items() if job.process.poll() is not None]
            for model, _job in finished:
                del self._jobs[model]
        for model, job in finished:
            job.log.close()
            code = job.process.returncode
            lines = job.log_path.read_text(errors="replace").splitlines()
            errors = [line for line in lines if line.startswith("error:")]
            detail = {"trigger": job.trigger, "exit_code": code, "seconds": round(time.time() - job.started, 1)}
            action, reason = "retrain finished", None
            if code != 0:
                action = "retrain failed"
                reason = errors[-1][len("error: ") :] if errors else (lines[-1] if lines else "no output")
            with self.store.begin() as conn:
                details = {**detail, "log": str(job.log_path)}
                audit.record(conn, "controller", action, target=model, reason=reason, details=details)
            log_event(logger, action, model=model, exit_code=code, level=logging.INFO if code == 0 else logging.WARNING)

    def _new_firings(self) -> list[dict[str, Any]]:
        query = sa.select(alerts).where(alerts.c.id > self._last_alert_id).order_by(alerts.c.id)
        with self.store.engine.connect() as conn:
            rows = [dict(row) for row in conn.execute(query).mappings()]
        if rows:
            self._last_alert_id = max(row["id"] for row in rows)
        return rows  # each row is one firing (a resolution updates its row)

    def _runs_model(self, subject: str, model: str) -> bool:
        """The alert's device runs `model` (unknown devices and group-scoped subjects count as a match)."""
        device = subject.split("/")[0]
        with self.store.engine.connect() as conn:
            name = conn.execute(sa.select(devices.c.model_name).where(devices.c.device_id == device)).scalar()
        return name is None or name == model

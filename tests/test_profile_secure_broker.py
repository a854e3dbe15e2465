"""Deployment profile 3 (issue 13), `make check-secure-broker`: Mosquitto started from deploy/mosquitto/ as shipped
(TLS only, a password per user, the ACL; certificates from make-certs.sh, users from add-device.sh), the real
`edgeloop cloud` over TLS with the CA-file setting, two real agent processes on MQTT 5 (gw-s1 with feedback rows
on, the canary of a shadow and of an A/B rollout), and an alert watcher with its read-only account. Every topic of
docs/mqtt.md crosses the broker: status and its last will, group and device desired state, reported state,
telemetry, events, feedback rows, the cloud's acknowledgements, alerts."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.agent_helpers import AgentServer, MqttRequester
from tests.conftest import TrainedBundle
from tests.fault_helpers import AgentProcess, CloudProcess, wait_http
from tests.secure_broker import Client, SecureBroker, start_secure_broker
from tests.test_agent_telemetry import records

pytestmark = pytest.mark.secure_broker

GROUP = "line-sec"
CANARY, OTHER = "gw-s1", "gw-s2"
OPERATOR = "sec-secret"
EDGELOOP = str(Path(sys.executable).with_name("edgeloop"))
USERS = [(CANARY, GROUP, "pw-s1"), (OTHER, GROUP, "pw-s2"), ("edgeloop-cloud", "--cloud", "pw-cloud"),
         ("ops-watch", "--alerts", "pw-watch")]  # fmt: skip
RULES = "rules:\n  - {name: device-offline, kind: device_offline, threshold: 1s, severity: critical}\n"


def _wait(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class Operator:
    """The `edgeloop` command line and the cloud's API, as an operator uses them."""

    def __init__(self, cloud: CloudProcess, home: Path) -> None:
        self.cloud = cloud
        self.env = {**os.environ, "EDGELOOP_HOME": str(home), "EDGELOOP_CLOUD_URL": cloud.url,
                    "EDGELOOP_CLOUD_TOKEN": OPERATOR, "COLUMNS": "200", "NO_COLOR": "1"}  # fmt: skip

    def run(self, *args: str) -> str:
        result = subprocess.run([EDGELOOP, *args], env=self.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"edgeloop {' '.join(args)}: {result.stdout}\n{result.stderr}"
        return result.stdout

    def api(self, path: str) -> Any:
        response = httpx.get(f"{self.cloud.url}{path}", headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10)
        response.raise_for_status()
        return response.json()

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["device_id"]: d for d in self.api(f"/v1/devices?group={GROUP}")}

    def rollout(self) -> dict[str, Any]:
        return dict(self.api(f"/v1/rollouts/latest?group={GROUP}"))

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Read the cloud's store (SQLite) directly: what was committed, not what an API chooses to show."""
        with sqlite3.connect(self.cloud.workdir / "cloud.db") as db:
            return db.execute(sql).fetchall()


@pytest.fixture()
def secure(tmp_path: Path) -> Iterator[SecureBroker]:
    broker = start_secure_broker(tmp_path, USERS)
    yield broker
    broker.stop()


def _agent(tmp_path: Path, secure: SecureBroker, trained: TrainedBundle, device: str, **env: Any) -> AgentProcess:
    password = next(p for user, _, p in USERS if user == device)
    agent = AgentProcess(tmp_path / device, device, GROUP, trained.bundle, trained.public_key, secure.url,
                         mqtt_ca_file=secure.ca, mqtt_username=device, mqtt_password=password, **env)  # fmt: skip
    flag = agent.args.index("--bundle")  # no model at start: everything the agent runs comes from the cloud
    agent.args = [*agent.args[:flag], *agent.args[flag + 2 :]]
    agent.start(wait=False)
    wait_http(f"{agent.url}/healthz", process=agent.process)
    return agent


def _model(agent: AgentProcess) -> dict[str, Any]:
    return agent.model()


def _predict(agent: AgentProcess, rows: list[dict[str, Any]], key: str | None = None) -> list[dict[str, Any]]:
    headers = {**agent.headers, **({"X-Request-Key": key} if key else {})}
    response = httpx.post(f"{agent.url}/v1/predict", json={"records": rows}, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return list(response.json()["predictions"])


def test_every_topic_works_under_the_shipped_secure_broker(
    tmp_path: Path, secure: SecureBroker, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    cloud = CloudProcess(
        tmp_path / "cloud", secure.url, rf_bundle.keys_dir, mqtt_username="edgeloop-cloud", mqtt_password="pw-cloud",
        mqtt_ca_file=secure.ca, operator_tokens=json.dumps([f"ops:{OPERATOR}"]), rollout_tick_s=0.2,
        rollout_confirm_timeout_s=30, alert_rules=tmp_path / "rules.yaml", alert_tick_s=0.5,
    ).start()  # fmt: skip
    watcher = Client(secure.broker, secure.ca, "ops-watch", "pw-watch", ["edgeloop/v1/alerts/#"])
    agents: list[AgentProcess] = []
    try:
        agents.append(_agent(tmp_path, secure, rf_bundle, CANARY, feedback_rows="true"))
        agents.append(_agent(tmp_path, secure, rf_bundle, OTHER))
        canary, other = agents
        op = Operator(cloud, tmp_path / "operator")

        # status (online, retained): both devices show up in the cloud.
        _wait(lambda: {d for d, v in op.devices().items() if v["online"]} == {CANARY, OTHER}, "both devices online")

        # group desired state -> both agents serve v1; reported state -> the cloud knows it.
        assert "state promoted" in op.run("deploy", str(rf_bundle.bundle), "--group", GROUP, "--canary", "0")
        _wait(lambda: all(v["model_version"] == 1 for v in op.devices().values()), "reported state v1 in the cloud")
        assert [(_model(a)["model"]["version"]) for a in agents] == [1, 1]

        # telemetry, events, feedback rows: committed in the cloud's store.
        rows = records(40, seed=7)
        answers = _predict(canary, rows)
        labels = [{"prediction_id": a["prediction_id"], "label": a["label"]} for a in answers]
        feedback = httpx.post(f"{canary.url}/v1/feedback", json={"feedback": labels}, headers=canary.headers)
        assert feedback.status_code == 200 and feedback.json()["accepted"] == 40
        _wait(lambda: op.rows(f"SELECT SUM(requests) FROM windows WHERE device_id = '{CANARY}'")[0][0] == 1,
              "the canary's telemetry window")  # fmt: skip
        _wait(lambda: op.rows(f"SELECT COUNT(*) FROM feedback_rows WHERE device_id = '{CANARY}'")[0][0] == 40,
              "40 feedback rows")  # fmt: skip
        kinds = {k for (k,) in op.rows(f"SELECT kind FROM events WHERE device_id = '{CANARY}'")}
        assert "deployed" in kinds, kinds

        # device desired state, shadow: v2 in shadow on the canary only.
        out = op.run("deploy", str(logreg_bundle_v2.bundle), "--group", GROUP, "--canary", CANARY, "--shadow",
                     "--soak", "10")  # fmt: skip
        assert "machine-failure/2" in out, out
        _wait(lambda: _model(canary)["shadow"], "the canary runs v2 in shadow")
        assert _model(other)["shadow"] is None and _model(canary)["model"]["version"] == 1
        _predict(canary, records(20, seed=8))
        _wait(lambda: op.rows("SELECT COUNT(*) FROM windows WHERE payload LIKE '%shadow_agreement%'")[0][0],
              "a window with the shadow's agreement")  # fmt: skip
        op.run("rollout", "rollback", op.rollout()["id"], "--reason", "profile test")
        _wait(lambda: _model(canary)["shadow"] is None, "shadow stopped after the rollback")

        # device desired state, A/B: v2 answers half the request keys on the canary.
        op.run("deploy", str(logreg_bundle_v2.bundle), "--group", GROUP, "--canary", CANARY, "--ab-fraction", "0.5")
        _wait(lambda: _model(canary)["ab"], "the canary splits with v2")
        arms = {a["arm"] for i in range(20) for a in _predict(canary, records(1, seed=i), key=f"machine-{i}")}
        assert arms == {"champion", "challenger"}, arms
        _wait(lambda: op.rows("SELECT COUNT(*) FROM windows WHERE payload LIKE '%\"arms\"%'")[0][0],
              "a window with both A/B arms")  # fmt: skip
        op.run("rollout", "rollback", op.rollout()["id"], "--reason", "profile test")
        _wait(lambda: _model(canary)["ab"] is None, "split stopped after the rollback")

        # last will: the other device dies; the broker announces it offline; the alert reaches the watcher.
        other.kill()
        _wait(lambda: not op.devices()[OTHER]["online"], "the last will marks gw-s2 offline")
        topic = f"edgeloop/v1/alerts/device-offline/{OTHER}"
        alert = _wait(lambda: [orjson.loads(p) for t, p in watcher.messages if t == topic and p], "the alert")
        assert alert[-1]["state"] == "firing", alert
        # The watcher reads alerts only; the devices published nothing the broker refused.
        assert all(t.startswith("edgeloop/v1/alerts/") for t, _ in watcher.messages)
        assert _model(canary)["outbox_refused_total"] == 0
        # ack: the cloud's watermark reaches the device (its own ack topic only), which then empties its outbox.
        assert _wait(lambda: _model(canary)["outbox_pending"] == 0, "the canary's outbox drained")
        assert _model(canary)["cloud_ack"]["mode"] == "ack"
    finally:
        watcher.stop()
        for agent in agents:
            agent.stop()
        cloud.stop()


def test_a_requester_asks_a_device_for_predictions_through_the_shipped_acl(
    tmp_path: Path, rf_bundle: TrainedBundle
) -> None:
    """Inference over MQTT under deploy/mosquitto as shipped: a --requester account asks a device (MQTT 5 response
    topic under its own name) and gets the /v1/predict answer; another requester cannot read it."""
    secure = start_secure_broker(
        tmp_path, [("gw-r1", GROUP, "pw-r1"), ("plc-1", "--requester", "pw-p1"), ("plc-2", "--requester", "pw-p2")]
    )
    server = AgentServer(
        state_dir=tmp_path / "gw-r1", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key, device_id="gw-r1",
        group=GROUP, mqtt_url=secure.url, mqtt_ca_file=secure.ca, mqtt_username="gw-r1", mqtt_password="pw-r1",
        mqtt_predict=True,
    )  # fmt: skip
    broker = secure.broker
    eavesdropper = Client(broker, secure.ca, "plc-2", "pw-p2", ["edgeloop/v1/devices/+/predict/response/plc-1"])
    requester = MqttRequester(broker.host, broker.port, "gw-r1", tls=secure.ca, user="plc-1", password="pw-p1")
    try:
        rows = records(4, seed=5)
        requester.wait_ready(rows[0], timeout=20)
        answer = requester.ask({"records": rows}, b"plc-1:42")
        assert answer.topic == "edgeloop/v1/devices/gw-r1/predict/response/plc-1"
        rest = server.predict({"records": rows}).json()["predictions"]
        assert [p["label"] for p in answer.payload["predictions"]] == [p["label"] for p in rest]
        got = [v for p in answer.payload["predictions"] for v in p["probabilities"].values()]
        assert got == pytest.approx([v for p in rest for v in p["probabilities"].values()], abs=1e-7)
        time.sleep(0.5)
        assert eavesdropper.messages == []  # plc-1's answers are plc-1's
    finally:
        requester.stop()
        eavesdropper.stop()
        server.stop()
        secure.stop()

"""Micro-batching (edge_agent/coalesce.py, issue 20): concurrent single-record requests to a real agent on uvicorn
share one model call, and each still gets exactly the answer it gets alone, its own error when its record is bad,
and counts once in the telemetry window (a real Mosquitto carries the window)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.errors import SchemaError
from edge_agent.app import Agent
from edge_agent.coalesce import Coalescer
from edge_agent.settings import AgentSettings
from tests.agent_helpers import AgentServer, MqttProbe
from tests.conftest import Broker, TrainedBundle
from tests.test_agent_telemetry import records

TOKEN = "coalesce-token"


async def _concurrently(url: str, bodies: list[Any]) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:
        await asyncio.gather(*(client.get("/healthz") for _ in bodies))  # open every connection first
        return await asyncio.gather(*(client.post("/v1/predict", json=body) for body in bodies))


def test_requests_waiting_together_share_one_model_call_and_each_gets_its_own_answer(
    tmp_path: Path, broker: Broker, rf_bundle: TrainedBundle
) -> None:
    """The coalescer on an event loop of its own over the real agent's service: every request queued in one loop
    turn goes into one model call (deterministic here; under HTTP it depends on how requests arrive)."""
    probe = MqttProbe(broker.host, broker.port)
    agent = Agent(AgentSettings(state_dir=tmp_path / "direct", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key,
                                device_id="gw-cd", mqtt_url=broker.url, telemetry_interval_s=600))  # fmt: skip
    agent.load()
    agent.start()
    try:
        rows = records(40, seed=32)
        alone = [agent.service.predict([row]).predictions[0] for row in rows]
        assert agent.telemetry is not None
        agent.telemetry.flush()
        first = probe.wait_for("gw-cd", "telemetry", lambda w: w["requests"] > 0)["seq"]
        coalescer = Coalescer(agent.service)

        async def together() -> list[Any]:
            bodies = [[row] for row in rows] + [[{**rows[0], "colour": "red"}], rows[:3]]
            return await asyncio.gather(*(coalescer.predict(body) for body in bodies), return_exceptions=True)

        answers = asyncio.run(together())
        assert coalescer.calls == 1  # 44 requests, one session.run
        for batch, expected in zip(answers[:40], alone, strict=True):
            got = batch.predictions[0]
            assert got["label"] == expected["label"] and got["probabilities"] == expected["probabilities"]
        assert isinstance(answers[40], SchemaError) and answers[40].field == "colour"
        assert [p["probabilities"] for p in answers[41].predictions] == [a["probabilities"] for a in alone[:3]]
        agent.telemetry.flush()
        window = probe.wait_for("gw-cd", "telemetry", lambda w: w["seq"] > first)
        assert window["requests"] == 41 and window["records"] == 43 and sum(window["latency_counts"]) == 41
    finally:
        agent.stop()
        probe.stop()


@pytest.mark.parametrize("micro_batch", [True, False], ids=["micro-batch", "one-call-per-request"])
def test_concurrent_http_requests_each_get_their_own_answer_and_count_once(
    tmp_path: Path, broker: Broker, rf_bundle: TrainedBundle, micro_batch: bool
) -> None:
    """The same answers and counts whether concurrent requests share model calls or not (`micro_batch`)."""
    probe = MqttProbe(broker.host, broker.port)
    server = AgentServer(
        state_dir=tmp_path / "state", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key, device_id="gw-co",
        group="plant-co", mqtt_url=broker.url, telemetry_interval_s=600, token=TOKEN, micro_batch=micro_batch,
    )  # fmt: skip
    try:
        coalescer = server.server.config.app.state.coalescer
        assert (coalescer is not None) == micro_batch
        rows = records(48, seed=31)
        alone = [server.predict(row).json() for row in rows]  # one at a time: each its own model call
        assert server.agent.telemetry is not None
        server.agent.telemetry.flush()
        first = probe.wait_for("gw-co", "telemetry", lambda w: w["requests"] > 0)["seq"]

        bad = {**rows[0], "colour": "red"}
        bodies: list[Any] = [*rows[:20], bad, *rows[20:], [rows[1], rows[2]]]  # a bad one and a batch of two among them
        answers = [r for _ in range(3) for r in asyncio.run(_concurrently(server.url, bodies))]

        for round_start in range(0, len(answers), len(bodies)):
            got = answers[round_start : round_start + len(bodies)]
            singles = [*got[:20], *got[21:-1]]
            for response, expected in zip(singles, alone, strict=True):
                assert response.status_code == 200, response.text
                answer = response.json()
                assert answer["label"] == expected["label"]
                assert answer["probabilities"] == expected["probabilities"]  # identical, not merely close
            assert got[20].status_code == 422 and got[20].json()["field"] == "colour"
            pair = got[-1].json()["predictions"]
            assert [p["probabilities"] for p in pair] == [alone[1]["probabilities"], alone[2]["probabilities"]]
            ids = [r.json()["prediction_id"] for r in singles]
            assert len(set(ids)) == len(ids)

        server.agent.telemetry.flush()
        window = probe.wait_for("gw-co", "telemetry", lambda w: w["seq"] > first)
        good = 3 * (len(bodies) - 1)
        assert window["requests"] == good and window["records"] == 3 * (len(rows) + 2)
        assert window["errors"] == {"schema_error": 3}
        assert sum(window["latency_counts"]) == good
        feedback = server.client.post("/v1/feedback", json={"prediction_id": ids[5], "label": alone[5]["label"]})
        assert feedback.status_code == 200 and feedback.json()["correct"] is True
    finally:
        server.stop()
        probe.stop()

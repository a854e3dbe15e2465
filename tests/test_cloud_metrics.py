"""The cloud's /metrics and /readyz on a real `edgeloop cloud` process with a private Mosquitto: the values follow
what the test sent, `promtool check metrics` accepts the live scrape, `promtool check rules` the shipped alert
rules, and every Grafana panel's query names a metric that a live cloud or agent really exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud_sync.fleet.simulator import make_window
from contracts.topics import device_topic
from tests.cloud_support import Publisher, wait_until
from tests.conftest import Broker, TrainedBundle
from tests.fault_helpers import AgentProcess, CloudProcess

ROOT = Path(__file__).resolve().parents[1]
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "le",
                "offset", "inf", "nan"}  # fmt: skip


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool is missing: apt-get install prometheus (.ci/run installs it)")
    return found


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text scrape."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def family_names(text: str) -> set[str]:
    """Every metric a scrape declares (HELP lines too: a labelled gauge with no child yet has no sample)."""
    names = set(re.findall(r"^# (?:HELP|TYPE) (\w+)", text, re.MULTILINE))
    names |= {name for (name, _labels) in samples(text)}
    return names


@pytest.fixture()
def cloud(tmp_path: Path, broker: Broker) -> Iterator[CloudProcess]:
    (tmp_path / "keys").mkdir()
    process = CloudProcess(tmp_path / "cloud", broker.url, tmp_path / "keys", rollout_tick_s=0.2).start()
    yield process
    process.stop()


def test_live_metrics_follow_what_was_ingested_and_pass_promtool(cloud: CloudProcess, broker: Broker) -> None:
    end = time.time()
    pub = Publisher(broker.host, broker.port)
    try:
        for seq in range(1, 6):
            pub.send(
                device_topic("dev-m1", "telemetry"), make_window("dev-m1", "line-a", seq, end + seq).model_dump_json()
            )
        for seq in (1, 3):  # seq 2 missing: a gap opens
            pub.send(
                device_topic("dev-m2", "telemetry"), make_window("dev-m2", "line-b", seq, end + seq).model_dump_json()
            )
        pub.send(device_topic("dev-m2", "telemetry"), b"{not json")  # a dead letter
        pub.send(device_topic("dev-m1", "telemetry"), make_window("dev-m1", "line-a", 5, end + 5).model_dump_json())

        def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            return samples(httpx.get(f"{cloud.url}/metrics", timeout=5).text)

        wait_until(lambda: scraped().get(("edgeloop_cloud_messages_received_total", ())) == 9, what="9 messages")
        values = scraped()
        assert values[("edgeloop_cloud_windows_ingested_total", ())] == 7
        assert values[("edgeloop_cloud_duplicates_total", ())] == 1
        assert values[("edgeloop_cloud_dead_letters_total", ())] == 1
        assert values[("edgeloop_cloud_dead_letters", ())] == 1
        assert values[("edgeloop_cloud_devices", (("group", "line-a"),))] == 1
        assert values[("edgeloop_cloud_devices", (("group", "line-b"),))] == 1
        assert values[("edgeloop_cloud_devices_online", (("group", "line-a"),))] == 1
        assert values[("edgeloop_cloud_gaps", (("state", "open"),))] == 1
        assert values[("edgeloop_cloud_gaps", (("state", "filled"),))] == 0
        assert values[("edgeloop_cloud_leader", ())] == 1  # SQLite: the one process leads
        assert values[("edgeloop_cloud_ingest_lag_seconds", ())] >= 0

        pub.send(device_topic("dev-m2", "telemetry"), make_window("dev-m2", "line-b", 2, end + 2).model_dump_json())
        wait_until(lambda: scraped().get(("edgeloop_cloud_gaps", (("state", "filled"),))) == 1, what="gap filled")
        assert scraped()[("edgeloop_cloud_gaps", (("state", "open"),))] == 0
    finally:
        pub.close()

    response = httpx.get(f"{cloud.url}/metrics", timeout=5)
    assert response.headers["content-type"].startswith("text/plain")
    check = subprocess.run([promtool(), "check", "metrics"], input=response.text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_readyz_answers_503_when_the_broker_is_gone(cloud: CloudProcess, broker: Broker) -> None:
    ready = httpx.get(f"{cloud.url}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "leader": True}, ready.text
    broker.stop()
    wait_until(lambda: httpx.get(f"{cloud.url}/readyz", timeout=5).status_code == 503, what="readyz 503")
    down = httpx.get(f"{cloud.url}/readyz", timeout=5)
    assert down.headers["content-type"] == "application/problem+json"
    assert "broker is not connected" in down.json()["detail"]
    assert httpx.get(f"{cloud.url}/healthz", timeout=5).status_code == 200  # alive, just not ready
    broker.start()
    wait_until(lambda: httpx.get(f"{cloud.url}/readyz", timeout=5).status_code == 200, timeout=20, what="ready again")


def test_shipped_alert_rules_pass_promtool() -> None:
    rules = ROOT / "deploy" / "prometheus-alerts.yml"
    check = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    text = rules.read_text()
    for metric in ("edgeloop_feature_psi", "edgeloop_feedback_accuracy", "edgeloop_model_updates_total",
                   "edgeloop_cloud_ingest_lag_seconds"):  # fmt: skip
        assert metric in text, f"no rule on {metric}"


def test_every_dashboard_query_names_a_live_metric(
    tmp_path: Path, cloud: CloudProcess, broker: Broker, rf_bundle: TrainedBundle
) -> None:
    agent = AgentProcess(tmp_path / "agent", "dev-g1", "line-g", rf_bundle.bundle, rf_bundle.public_key, broker.url)
    agent.start()
    try:
        known = family_names(httpx.get(f"{agent.url}/metrics", timeout=5).text)
    finally:
        agent.stop()
    known |= family_names(httpx.get(f"{cloud.url}/metrics", timeout=5).text)
    known |= {"up"}  # Prometheus' own, per scrape target
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
    titles = {p["title"] for p in panels}
    assert {"Fleet: devices online by group", "Feature drift (PSI) by instance", "Feedback accuracy"} <= titles
    checked = 0
    for panel in panels:
        for target in panel.get("targets", []):
            expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', "", target["expr"])  # label matchers, strings, ranges
            names = {w for w in re.findall(r"[a-zA-Z_:][\w:]*", expr) if "_" in w or w == "up"}
            functions = {w for w in re.findall(r"([a-zA-Z_]+)\s*\(", expr)}
            metrics = {n for n in names - functions - PROMQL_WORDS if not n.startswith("__")}
            for name in metrics:
                base = re.sub(r"_(bucket|count|sum)$", "", name)
                assert name in known or base in known, f"panel {panel['title']!r} queries {name}, which no scrape has"
            checked += len(metrics)
    assert checked >= 10

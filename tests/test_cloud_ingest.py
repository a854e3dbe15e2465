"""Ingest through a real Mosquitto into SQLite and PostgreSQL: idempotency, gaps, dead letters, restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from cloud_sync.fleet.simulator import iso_utc, make_window
from cloud_sync.fleet.stats import dead_letter_list, device_list, gap_list
from cloud_sync.ingest.subscriber import Ingest
from cloud_sync.store.db import Store, audit_log, dead_letters, devices, events, windows
from contracts.messages import DeviceEvent, DeviceStatus
from contracts.topics import device_topic
from tests.cloud_support import Publisher, count, make_store, wait_until
from tests.conftest import Broker


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with make_store(request.param, tmp_path) as instance:
        yield instance


def _ingest(store: Store, broker: Broker, client_id: str = "test-ingest") -> Ingest:
    ingest = Ingest(store, broker.url, client_id=client_id, batch=50)
    ingest.start()
    wait_until(ingest.connected.is_set, what="ingest connected")
    time.sleep(0.2)  # let the SUBACK arrive before publishing
    return ingest


def test_redelivery_changes_nothing_and_a_gap_is_recorded(store: Store, broker: Broker) -> None:
    ingest = _ingest(store, broker)
    pub = Publisher(broker.host, broker.port)
    topic = device_topic("dev-1", "telemetry")
    end = time.time()
    try:
        for seq in (1, 2, 3):
            pub.send(topic, make_window("dev-1", "line-1", seq, end + seq, requests=10 * seq).model_dump_json())
        wait_until(lambda: count(store, windows) == 3, what="3 windows")
        # A redelivery (same device and seq), even with different content, changes nothing.
        pub.send(topic, make_window("dev-1", "line-1", 2, end + 2, requests=999).model_dump_json())
        pub.send(topic, make_window("dev-1", "line-1", 6, end + 6, requests=60).model_dump_json())
        wait_until(lambda: count(store, windows) == 4, what="window 6")
        assert ingest.wait_idle(5)
        with store.engine.connect() as conn:
            stored = dict(conn.execute(sa.select(windows.c.seq, windows.c.requests)).all())
        assert stored == {1: 10, 2: 20, 3: 30, 6: 60}
        assert ingest.stats.duplicates == 1
        assert [(g["first_missing"], g["last_missing"], g["still_missing"]) for g in gap_list(store)] == [(4, 5, 2)]
        # A late window inside the gap fills it partly; the gap stays visible until complete.
        pub.send(topic, make_window("dev-1", "line-1", 4, end + 4, requests=40).model_dump_json())
        wait_until(lambda: count(store, windows) == 5, what="window 4")
        assert ingest.wait_idle(5)
        assert [(g["first_missing"], g["still_missing"]) for g in gap_list(store)] == [(4, 1)]
        # Events: idempotent on their own sequence, accepted/rejected go to the audit log once.
        event = DeviceEvent(
            device_id="dev-1",
            seq=1,
            kind="rejected",
            model_name="m",
            model_version=2,
            reason="golden sample 0 differs",
            at=iso_utc(end),
        )
        for _ in range(3):
            pub.send(device_topic("dev-1", "events"), event.model_dump_json())
        status = DeviceStatus(device_id="dev-1", online=True, at=iso_utc(end))
        pub.send(device_topic("dev-1", "status"), status.model_dump_json(), retain=True)
        wait_until(lambda: count(store, events) == 1 and ingest.stats.received >= 10, what="event and status")
        assert ingest.wait_idle(5)
        assert count(store, events) == 1
        assert count(store, audit_log) == 1
        [device] = device_list(store)
        assert device["device_id"] == "dev-1" and device["group"] == "line-1" and device["online"] is True
    finally:
        pub.close()
        ingest.stop()


def test_a_wiped_device_restarting_its_numbers_under_a_new_epoch_loses_nothing(store: Store, broker: Broker) -> None:
    """A device whose state directory was recreated counts from 1 again with a new outbox epoch: its windows
    and events are new messages, not duplicates of the old ones, and no false gap is recorded."""
    ingest = _ingest(store, broker)
    pub = Publisher(broker.host, broker.port)
    topic = device_topic("dev-w", "telemetry")
    end = time.time()
    old_epoch, new_epoch = 1_700_000_000_000, 1_700_000_999_000
    try:
        for epoch_ms, requests in ((old_epoch, 10), (new_epoch, 20)):
            for seq in (1, 2, 3):
                window = make_window("dev-w", "line-1", seq, end + seq, requests=requests)
                window.epoch = epoch_ms
                pub.send(topic, window.model_dump_json())
            event = DeviceEvent(device_id="dev-w", seq=1, epoch=epoch_ms, kind="started", at=iso_utc(end))
            pub.send(device_topic("dev-w", "events"), event.model_dump_json())
        # A redelivery of the old epoch's window 2 is still a duplicate.
        window = make_window("dev-w", "line-1", 2, end + 2, requests=999)
        window.epoch = old_epoch
        pub.send(topic, window.model_dump_json())
        wait_until(lambda: count(store, windows) == 6 and count(store, events) == 2, what="6 windows, 2 events")
        wait_until(lambda: ingest.stats.duplicates == 1, what="the redelivery counted as a duplicate")
        assert ingest.wait_idle(5)
        with store.engine.connect() as conn:
            stored = sorted(conn.execute(sa.select(windows.c.epoch, windows.c.seq, windows.c.requests)).all())
        assert stored == [(old_epoch, s, 10) for s in (1, 2, 3)] + [(new_epoch, s, 20) for s in (1, 2, 3)]
        assert gap_list(store) == []
    finally:
        pub.close()
        ingest.stop()


def test_malformed_and_wrong_schema_messages_go_to_dead_letters(store: Store, broker: Broker) -> None:
    ingest = _ingest(store, broker)
    pub = Publisher(broker.host, broker.port)
    topic = device_topic("dev-2", "telemetry")
    good = make_window("dev-2", "line-1", 1, time.time())
    wrong_version = good.model_dump(mode="json") | {"schema_version": "v2"}
    missing_field = {k: v for k, v in good.model_dump(mode="json").items() if k != "seq"}
    other_device = make_window("dev-3", "line-1", 1, time.time()).model_dump_json()

    try:
        pub.send(topic, b"{not json")
        pub.send(topic, orjson.dumps(wrong_version))
        pub.send(topic, orjson.dumps(missing_field))
        pub.send(topic, other_device)
        pub.send(topic, b"[1, 2]")
        pub.send(topic, b"")
        pub.send(topic, good.model_dump_json())  # the ingest is still alive and keeps working
        wait_until(lambda: count(store, windows) == 1, what="the good window")
        assert ingest.wait_idle(5)
        letters = dead_letter_list(store)
        assert letters["count"] == 6
        reasons = " | ".join(row["reason"] for row in letters["latest"])
        assert "malformed JSON" in reasons
        assert "schema_version 'v2' is not v1" in reasons
        assert "TelemetryWindow v1 at seq" in reasons
        assert "does not match the topic's 'dev-2'" in reasons
        assert "not an object" in reasons
        assert "empty payload" in reasons
        with store.engine.connect() as conn:
            kept = conn.execute(sa.select(dead_letters.c.payload).order_by(dead_letters.c.id)).scalars().first()
        assert kept == b"{not json"
    finally:
        pub.close()
        ingest.stop()


def test_a_restarted_ingest_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    with make_store("sqlite", tmp_path) as store:
        ingest = _ingest(store, broker, "restart-ingest")
        ingest.stop()
        pub = Publisher(broker.host, broker.port)
        end = time.time()
        for seq in range(1, 21):  # published while no ingest is running
            pub.send(device_topic("dev-r", "telemetry"), make_window("dev-r", "g", seq, end + seq).model_dump_json())
        pub.close()
        ingest = _ingest(store, broker, "restart-ingest")  # same client id: the persistent session
        try:
            wait_until(lambda: count(store, windows) == 20, what="20 queued windows")
            assert gap_list(store) == []
            with store.engine.connect() as conn:
                assert conn.execute(sa.select(devices.c.device_id)).scalars().all() == ["dev-r"]
        finally:
            ingest.stop()

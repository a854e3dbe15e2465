"""Fuzzing the MQTT ingest through a real Mosquitto into SQLite and PostgreSQL: seeded random bytes, JSON of
the wrong types, huge numbers, deep nesting, wrong schema versions and valid messages of the wrong kind on
every device topic. Each one becomes exactly one dead letter, nothing else is stored, and the ingest keeps
running: a valid window published after the fuzz is ingested."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from cloud_sync.fleet.simulator import iso_utc, make_window
from cloud_sync.ingest.subscriber import Ingest
from cloud_sync.store.db import Store, dead_letters, devices, events, feedback_rows, windows
from contracts.messages import DeviceEvent, DeviceStatus, FeedbackRow, FeedbackRows, ReportedState
from contracts.topics import device_topic
from tests.cloud_support import Publisher, count, make_store, wait_until
from tests.conftest import Broker

DEVICE = "dev-fuzz"
KINDS = ("telemetry", "events", "feedback", "reported", "status")
SEED = 20261125


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with make_store(request.param, tmp_path) as instance:
        yield instance


def _valid(now: float) -> dict[str, dict[str, Any]]:
    """One valid message of each kind from DEVICE, as JSON objects."""
    at = iso_utc(now)
    return {
        "telemetry": make_window(DEVICE, "line-1", 1, now).model_dump(mode="json"),
        "events": DeviceEvent(device_id=DEVICE, seq=1, kind="started", at=at).model_dump(mode="json"),
        "feedback": FeedbackRows(
            device_id=DEVICE,
            group="line-1",
            seq=1,
            model_name="m",
            model_version=1,
            sent_at=at,
            rows=[FeedbackRow(prediction_id="p1", made_at=at, predicted="0", actual="1", features={"x": 1.0})],
        ).model_dump(mode="json"),
        "reported": ReportedState(
            device_id=DEVICE,
            group="line-1",
            model_name="m",
            model_version=1,
            bundle_sha256="0" * 64,
            state="serving",
            agent_version="0.1",
            updated_at=at,
        ).model_dump(mode="json"),
        "status": DeviceStatus(device_id=DEVICE, online=True, at=at).model_dump(mode="json"),
    }


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _fuzz_payloads(kind: str, valid: dict[str, dict[str, Any]], rng: random.Random) -> list[bytes]:
    """Malformed or wrong payloads for the topic of `kind`; none of them may be stored."""
    mine = valid[kind]
    out: list[bytes] = []
    # Seeded random bytes (never empty: an empty retained reported/status is a legitimate "cleared").
    out += [rng.randbytes(rng.randint(1, 300)) for _ in range(8)]
    out.append(rng.randbytes(1 << 20))  # 1 MiB of noise (64 KiB of it kept in the dead letter)
    # Not JSON, truncated JSON, JSON that is not an object.
    out += [b"\x00\xff\xfe", orjson.dumps(mine)[:-7], b"null", b"42", b'"text"', b"[{}]", b"{}"]
    # Wrong types for every field of the valid message.
    for field, value in mine.items():
        if field == "schema_version":
            continue
        wrong: Any = [1, 2] if isinstance(value, str) else "not-a-" + type(value).__name__
        if isinstance(value, dict | list):
            wrong = 3.5
        elif value is None:  # an optional field: an object fits none of them
            wrong = {"wrong": True}
        out.append(orjson.dumps(mine | {field: wrong}))
    # Huge numbers: integers past 64 bits in the integer fields, and a number past a double.
    for field, value in mine.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out.append(orjson.dumps(mine).replace(f'"{field}":{value}'.encode(), f'"{field}":{10**30}'.encode()))
    out.append(orjson.dumps(mine)[:-1] + b',"huge":1e999}')
    # Deep nesting: the whole payload, and inside a free-form field.
    out.append(_nested(100_000))
    out.append(orjson.dumps(mine)[:-1] + b',"details":' + _nested(5_000) + b"}")
    out.append(b'{"a":' * 3_000 + b"1" + b"}" * 3_000)
    # Wrong schema versions, and none at all.
    for version in ("v2", "V1", "", 1, None):
        out.append(orjson.dumps(mine | {"schema_version": version}))
    out.append(orjson.dumps({k: v for k, v in mine.items() if k != "schema_version"}))
    # Valid messages of every other kind, and a payload naming another device.
    out += [orjson.dumps(message) for other, message in valid.items() if other != kind]
    out.append(orjson.dumps(mine | {"device_id": "dev-other"}))
    return out


def _assert_valid_kinds(valid: dict[str, dict[str, Any]]) -> None:
    """The reference payloads themselves are accepted (else the fuzz would prove nothing)."""
    from cloud_sync.ingest.writer import Incoming, Parsed, parse_message

    for kind, message in valid.items():
        parsed = parse_message(Incoming(device_topic(DEVICE, kind), orjson.dumps(message), time.time()))
        assert isinstance(parsed, Parsed), (kind, parsed)


def test_every_malformed_message_is_a_dead_letter_and_the_ingest_goes_on(store: Store, broker: Broker) -> None:
    rng = random.Random(SEED)
    valid = _valid(time.time())
    _assert_valid_kinds(valid)
    sent: list[tuple[str, bytes]] = [
        (device_topic(DEVICE, kind), payload) for kind in KINDS for payload in _fuzz_payloads(kind, valid, rng)
    ]
    ingest = Ingest(store, broker.url, client_id="fuzz-ingest", batch=50)
    ingest.start()
    pub = Publisher(broker.host, broker.port)
    try:
        wait_until(ingest.connected.is_set, what="ingest connected")
        time.sleep(0.2)  # let the SUBACK arrive before publishing
        for topic, payload in sent:
            pub.send(topic, payload)
        deadline = time.monotonic() + 30
        while count(store, dead_letters) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ingest.wait_idle(10)
        with store.engine.connect() as conn:
            stored = conn.execute(sa.select(dead_letters.c.topic, dead_letters.c.payload)).all()
        expected = sorted((topic, payload[: 1 << 16]) for topic, payload in sent)
        got = sorted((row.topic, bytes(row.payload)) for row in stored)
        missing = [(topic, payload[-300:]) for topic, payload in expected if (topic, payload) not in got]
        assert missing == [] and got == expected, f"{len(missing)} not dead-lettered: {missing}"
        for table in (windows, events, feedback_rows, devices):
            assert count(store, table) == 0, f"a fuzzed message was stored in {table.name}"
        # Still alive: a valid window after the fuzz is ingested.
        pub.send(device_topic(DEVICE, "telemetry"), make_window(DEVICE, "line-1", 1, time.time()).model_dump_json())
        wait_until(lambda: count(store, windows) == 1, what="the valid window after the fuzz")
        assert ingest.wait_idle(10) and count(store, dead_letters) == len(sent)
    finally:
        pub.close()
        ingest.stop()

"""Helpers for the cloud tests: stores on SQLite and on the real PostgreSQL, waiting, publishing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from cloud_sync.store.db import Store
from contracts.telemetry import LATENCY_BUCKETS, ArmCounts

PG_USERS = ("postgres", "root")


def postgres_url() -> str:
    """A URL for the test database at 127.0.0.1:5432 (trust auth), or fail saying how to get one."""
    errors = []
    for user in PG_USERS:
        url = f"postgresql+psycopg://{user}@127.0.0.1:5432/test"
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
            return url
        except sa.exc.OperationalError as exc:
            errors.append(f"{user}: {str(exc.orig).strip().splitlines()[0] if exc.orig else exc}")
        finally:
            engine.dispose()
    pytest.fail(
        "PostgreSQL at 127.0.0.1:5432 database `test` is not reachable (.ci/run starts it): " + "; ".join(errors)
    )


@contextmanager
def make_store(engine: str, tmp_path: Path) -> Iterator[Store]:
    """A fresh store: a SQLite file in tmp_path, or a unique schema in PostgreSQL dropped afterwards."""
    if engine == "sqlite":
        store = Store(f"sqlite:///{tmp_path / 'cloud.db'}").create()
    else:
        store = Store(postgres_url(), schema=f"edgeloop_test_{uuid.uuid4().hex[:10]}").create()
    try:
        yield store
    finally:
        if engine == "postgresql":
            store.drop_all()
        store.dispose()


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Publisher:
    """A plain MQTT client that publishes raw payloads at QoS 1 and waits for each PUBACK."""

    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.connect(host, port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def count(store: Store, table: sa.Table) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def arm_counts(classes: list[str], requests: int, errors: int, labels: int, accuracy: float) -> ArmCounts:
    """One arm of an A/B window: `requests` with `errors` failed, `labels` feedback labels `accuracy` right."""
    right = round(labels * accuracy)
    first, second = classes[0], classes[-1]
    latency = [0] * (len(LATENCY_BUCKETS) + 1)
    latency[2] = requests - errors
    return ArmCounts(
        requests=requests,
        errors=errors,
        records=requests - errors,
        latency_counts=latency,
        latency_sum=0.002 * (requests - errors),
        confusion={first: {first: right, second: labels - right}},
    )

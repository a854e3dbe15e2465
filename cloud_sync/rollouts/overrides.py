"""Device-level desired states ("overrides"): published to a few devices (a canary, a canary rollback) and
recorded in `desired_overrides`, so that a promotion clears exactly the topics that hold a retained payload
instead of one empty publish per device of the group.

Clearing covers the overrides recorded for the group, plus those of devices now in the group (a device that
moved keeps its old override until then), plus any device named in `extra`. Publishes go out as one batch
(`MqttPublisher.publish_many`: every PUBACK awaited at the end). An override is recorded before it is
published and forgotten only after its clearing was acknowledged, so a publish that fails half-way leaves
at worst a record too many (clearing a topic that holds nothing is harmless), never a stale override.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import sqlalchemy as sa

from cloud_sync.ingest.publisher import MqttPublisher
from cloud_sync.store.db import Store, desired_overrides, devices
from contracts.topics import device_topic

__all__ = ["CLEAR_BATCH", "clear", "publish", "published", "recorded"]

CLEAR_BATCH = 500
"""Empty payloads published (and acknowledged) before their records are forgotten."""


def publish(
    store: Store, publisher: MqttPublisher, *, group: str, names: Iterable[str], payload: str, rollout_id: str
) -> None:
    """A retained desired state on each device's own topic, recorded for a later `clear`."""
    names = sorted(set(names))
    if not names:
        return
    now = time.time()
    rows = [{"device_id": n, "group_name": group, "rollout_id": rollout_id, "published_at": now} for n in names]
    with store.begin() as conn:  # recorded first: a publish that fails half-way still gets cleared later
        conn.execute(store.upsert(desired_overrides, "device_id", ["group_name", "rollout_id", "published_at"]), rows)
    publisher.publish_many([(device_topic(name, "desired"), payload) for name in names])


def published(store: Store, rollout_id: str) -> dict[str, float]:
    """When each device override of `rollout_id` still recorded was published (a staged rollout's switch times)."""
    c = desired_overrides.c
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(c.device_id, c.published_at).where(c.rollout_id == rollout_id)).all()
    return {row.device_id: float(row.published_at) for row in rows}


def recorded(store: Store, group: str, extra: Iterable[str] = ()) -> list[str]:
    """Devices holding an override that `clear(group, extra)` would clear (one query)."""
    c = desired_overrides.c
    members = sa.select(devices.c.device_id).where(devices.c.group_name == group)
    query = sa.select(c.device_id).where(sa.or_(c.group_name == group, c.device_id.in_(members)))
    with store.engine.connect() as conn:
        found = {row.device_id for row in conn.execute(query)}
    return sorted(found | set(extra))


def clear(store: Store, publisher: MqttPublisher, group: str, *, extra: Iterable[str] = ()) -> int:
    """Empty retained payloads on the recorded device-level desired topics of `group` (and `extra`);
    returns how many were cleared."""
    names = recorded(store, group, extra)
    for start in range(0, len(names), CLEAR_BATCH):
        # Forgotten batch by batch once acknowledged: a broker too slow for all of them at once (10,000 devices
        # at load, a staged rollout clearing half its group) leaves only the rest for the next try.
        batch = names[start : start + CLEAR_BATCH]
        publisher.publish_many([(device_topic(name, "desired"), b"") for name in batch])
        with store.begin() as conn:
            conn.execute(desired_overrides.delete().where(desired_overrides.c.device_id.in_(batch)))
    return len(names)

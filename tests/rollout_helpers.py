"""The rollout controller on a real broker and a SQLite store, with simulated devices (`SimDevice`): what
tests/test_cloud_rollouts.py and tests/test_cloud_stages.py share."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_sync.fleet.simulator import SimDevice
from cloud_sync.fleet.stats import device_list
from cloud_sync.ingest.publisher import MqttPublisher
from cloud_sync.ingest.subscriber import Ingest
from cloud_sync.rollouts.checks import Limits
from cloud_sync.rollouts.controller import Rollouts
from cloud_sync.store.bundles import BundleRegistry
from cloud_sync.store.db import Store
from contracts.manifest import Manifest
from contracts.signing import load_public_key
from tests.cloud_support import make_store, wait_until
from tests.conftest import Broker, TrainedBundle

__all__ = ["Cloud", "running_cloud"]


@dataclass
class Cloud:
    store: Store
    registry: BundleRegistry
    rollouts: Rollouts
    ingest: Ingest
    broker: Broker
    v1: Manifest
    v2: Manifest

    def devices(self, count: int, group: str = "line-1", **kwargs: object) -> list[SimDevice]:
        devices = [
            SimDevice(f"dev-{i}", group, self.broker.host, self.broker.port, **kwargs).start()  # type: ignore[arg-type]
            for i in range(1, count + 1)
        ]
        wait_until(lambda: len(device_list(self.store, group)) == count, what="devices known to the cloud")
        return devices

    def run_until(self, rollout_id: str, states: tuple[str, ...], timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ingest.wait_idle(2)
            self.rollouts.tick()
            status = self.rollouts.status(rollout_id)
            if status["state"] in states:
                return status
            time.sleep(0.1)
        raise AssertionError(f"rollout {rollout_id} still {self.rollouts.status(rollout_id)['state']}")


@contextmanager
def running_cloud(
    broker: Broker,
    tmp_path: Path,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
    engine: str = "sqlite",
    **options: Any,
) -> Iterator[Cloud]:
    """Ingest, publisher and `Rollouts` (v1 and v2 registered) on a store of `engine` (`sqlite`, `postgresql`);
    `options` go to `Rollouts`."""
    with make_store(engine, tmp_path) as store:
        registry = BundleRegistry(tmp_path / "bundles", load_public_key(rf_bundle.public_key))
        v1 = registry.add(rf_bundle.bundle).manifest
        v2 = registry.add(logreg_bundle_v2.bundle).manifest
        ingest = Ingest(store, broker.url, client_id="rollout-ingest")
        ingest.start()
        publisher = MqttPublisher(broker.url).start()
        limits = Limits(min_samples=50)
        rollouts = Rollouts(
            store,
            registry,
            publisher,
            base_url="http://127.0.0.1:1",
            keys_dir=rf_bundle.keys_dir,
            limits=limits,
            **({"confirm_timeout_s": 10.0} | options),
        )
        wait_until(ingest.connected.is_set, what="ingest connected")
        time.sleep(0.2)
        yield Cloud(store, registry, rollouts, ingest, broker, v1, v2)
        publisher.stop()
        ingest.stop()

"""The local engine's ScoringPool: results in input order whatever order the workers finish in, each model used
by one call at a time, a bounded number of items in flight, and an error raised to the consumer that stops the
pool. Real threads; the "models" are plain objects, since the pool only hands them out."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest

from cloud_sync.batch.pipeline import ScoringPool


class Model:
    def __init__(self) -> None:
        self.busy = threading.Lock()
        self.calls = 0


def test_results_keep_input_order_and_each_model_serves_one_call_at_a_time() -> None:
    models = [Model() for _ in range(3)]
    delays = random.Random(7).choices([0.0, 0.001, 0.005], k=200)

    def work(model: Model, item: int) -> tuple[int, int]:
        assert model.busy.acquire(blocking=False), "a model was handed to two calls at once"
        try:
            model.calls += 1
            time.sleep(delays[item])  # later items often finish first
            return item, threading.get_ident()
        finally:
            model.busy.release()

    with ScoringPool(models) as pool:
        results = list(pool.map(work, range(200)))
    assert [item for item, _ in results] == list(range(200))
    assert len({thread for _, thread in results}) == 3  # the calls ran on three worker threads
    assert sum(model.calls for model in models) == 200 and all(model.calls for model in models)


def test_items_in_flight_are_bounded_by_depth() -> None:
    """The source is read only as fast as results are consumed: a slow consumer holds the reader back."""
    read = 0

    def source() -> Iterator[int]:
        nonlocal read
        for item in range(50):
            read += 1
            yield item

    ahead = []
    with ScoringPool([Model(), Model()], depth=4) as pool:
        for consumed, item in enumerate(pool.map(lambda model, value: value, source()), start=1):
            assert item == consumed - 1
            ahead.append(read - consumed)
            time.sleep(0.002)
    assert max(ahead) <= 4 and read == 50


def test_an_error_reaches_the_consumer_in_order_and_stops_the_pool() -> None:
    started: list[int] = []

    def work(model: Model, item: int) -> int:
        started.append(item)
        if item == 5:
            raise ValueError("bad batch 5")
        time.sleep(0.001)
        return item

    got: list[int] = []
    with ScoringPool([Model(), Model()]) as pool, pytest.raises(ValueError, match="bad batch 5"):
        for item in pool.map(work, range(1000)):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]  # every result before the failing item, none after it
    assert max(started) < 5 + 2 * 2 + 1  # nothing submitted beyond the window


def test_a_pool_needs_a_model() -> None:
    with pytest.raises(ValueError, match="at least one model"):
        ScoringPool([])

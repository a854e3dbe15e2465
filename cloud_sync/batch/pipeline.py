"""Score a stream of record batches on several onnxruntime sessions at once, in input order, with a bounded
number of batches in flight.

One session per core, each with one intra-op thread, each driven by its own worker thread: onnxruntime
releases the GIL in `session.run`, and Arrow releases it while casting and building columns, so the
workers score in parallel. One thread per session scores more rows per CPU-second than one session with a
thread per core (no parallel sections to split and join per call; see docs/batch-scoring.md), and no core
waits for another at the end of each call.

    with ScoringPool(models) as pool:
        for scored in pool.map(score_one, batches):
            writer.put(scored)

At most `depth` batches are submitted and not yet handed back (default: two per session), so memory stays
bounded by the batch size whatever the input's size, and a slow consumer (the Parquet writer) holds the
workers back instead of letting results pile up.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Generic, TypeVar

__all__ = ["ScoringPool"]

Model = TypeVar("Model")
Item = TypeVar("Item")
Result = TypeVar("Result")


class ScoringPool(Generic[Model]):
    """Worker threads, one per model; `map` runs a function on (model, item) for each item, results in order."""

    def __init__(self, models: Sequence[Model], depth: int = 0) -> None:
        if not models:
            raise ValueError("a ScoringPool needs at least one model")
        self.workers = len(models)
        self.depth = depth or 2 * self.workers
        self._free: queue.SimpleQueue[Model] = queue.SimpleQueue()
        for model in models:
            self._free.put(model)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="edgeloop-score")

    def _run(self, function: Callable[[Model, Item], Result], item: Item) -> Result:
        model = self._free.get()  # never waits: at most `workers` calls run at once
        try:
            return function(model, item)
        finally:
            self._free.put(model)

    def map(self, function: Callable[[Model, Item], Result], items: Iterable[Item]) -> Iterator[Result]:
        """`function(model, item)` for every item, yielded in the order of `items`; an error is raised here
        (the items submitted after it are cancelled or their results dropped)."""
        pending: deque[Future[Result]] = deque()
        try:
            for item in items:
                pending.append(self._executor.submit(self._run, function, item))
                if len(pending) >= self.depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            for future in pending:
                if not future.cancelled():
                    future.exception()  # wait: no worker still uses a batch the caller is about to drop

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ScoringPool[Model]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

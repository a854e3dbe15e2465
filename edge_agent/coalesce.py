"""Micro-batching on the event loop (issue 20): concurrent small requests share one model call.

Under concurrency uvicorn reads several requests in one turn of the event loop and starts a task for each; every
one of them reaches `Coalescer.predict` before the loop turns again. The first schedules a flush with
`loop.call_soon`, which runs after the tasks already queued, so the flush finds all of them waiting and hands
their records to `InferenceService.predict_many`: one `session.run` for all, each request answered exactly what it
would get alone (or its own error), counted once. A lone request (concurrency 1) waits one loop turn, a few
microseconds: nothing is held back for company. Only requests small enough to run on the event loop come here
(`/v1/predict` up to 32 records); bigger ones still go to the thread pool on their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from contracts.errors import EdgeloopError
from edge_agent.loaded import PredictionBatch
from edge_agent.service import InferenceService

__all__ = ["Coalescer"]

_Waiting = tuple[Sequence[Mapping[str, Any]], "asyncio.Future[PredictionBatch]"]


class Coalescer:
    def __init__(self, service: InferenceService, max_records: int = 256) -> None:
        self.service = service
        self.max_records = max_records
        """A flush runs at most this many records in one call (the rest go in the next call of the same flush)."""
        self._waiting: list[_Waiting] = []
        self.calls = 0
        """Model calls made by flushes (a test and the bench read it; requests / calls = the batching)."""

    async def predict(self, records: Sequence[Mapping[str, Any]]) -> PredictionBatch:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PredictionBatch] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.append((records, future))
        return await future

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        group: list[_Waiting] = []
        size = 0
        for item in waiting:
            if group and size + len(item[0]) > self.max_records:
                self._run(group)
                group, size = [], 0
            group.append(item)
            size += len(item[0])
        self._run(group)

    def _run(self, group: list[_Waiting]) -> None:
        self.calls += 1
        try:
            answers: list[PredictionBatch | EdgeloopError] = self.service.predict_many([r for r, _ in group])
        except Exception as exc:  # no model, or a failure of the model call itself: every request gets it
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), answer in zip(group, answers, strict=True):
            if future.done():  # the client went away meanwhile
                continue
            if isinstance(answer, EdgeloopError):
                future.set_exception(answer)
            else:
                future.set_result(answer)

"""Hybrid inference: ask the cloud's scoring endpoint (`POST /v1/score` of `edgeloop cloud`) about records
the edge model is unsure of, within a deadline.

The HTTP call runs on a small private thread pool (never on the event loop, never on the pool that serves
big batches) with an httpx timeout equal to the deadline; the caller stops waiting at the deadline in any
case and answers with the edge model (`edge_fallback`). A call still queued when its deadline has passed
is skipped rather than sent late.

    client = HybridClient("http://cloud:8700", token, threshold=0.7, deadline_s=0.15)
    answers = await client.ask("machine-failure", 3, [record])   # ([{label, probabilities}], "name/version") | None
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson

from contracts.logs import log_event

__all__ = ["HybridClient"]

logger = logging.getLogger("edgeloop.agent.hybrid")
Answers = tuple[list[dict[str, Any]], str]


class HybridClient:
    def __init__(
        self, url: str, token: str | None, threshold: float, deadline_s: float = 0.15, max_concurrency: int = 4
    ) -> None:
        self.url = url.rstrip("/") + "/v1/score"
        self.threshold = threshold
        self.deadline_s = deadline_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers["Content-Type"] = "application/json"
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(deadline_s))
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="hybrid")
        self.failures = 0

    def _call(self, body: bytes, expires: float, size: int) -> Answers | None:
        if time.monotonic() >= expires:
            return None
        response = self._http.post(self.url, content=body)
        response.raise_for_status()
        data = response.json()
        predictions = data["predictions"]
        if len(predictions) != size:
            raise ValueError(f"cloud answered {len(predictions)} predictions for {size} records")
        return predictions, f"{data['model']}/{data['version']}"

    async def ask(self, model: str, version: int, records: Sequence[Mapping[str, Any]]) -> Answers | None:
        """The cloud's answers for `records`, or None when it is slow, unreachable or refuses them."""
        body = orjson.dumps({"model": model, "version": version, "records": list(records)})
        expires = time.monotonic() + self.deadline_s
        future = self._pool.submit(self._call, body, expires, len(records))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.deadline_s)
        except Exception as exc:  # timeout, connection refused, HTTP error, bad answer: the edge answers
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log_event(logger, "cloud scoring failed, the edge model answers", level=logging.WARNING,
                          error=type(exc).__name__, detail=str(exc)[:200], failures=self.failures)  # fmt: skip
            return None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

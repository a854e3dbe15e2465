"""Hybrid inference: ask the cloud's scoring endpoint (`POST /v1/score` of `edgeloop cloud`) about records
the edge model is unsure of, within a deadline.

The HTTP call runs on a small private thread pool (never on the event loop, never on the pool that serves
big batches) over the standard library's `http.client` (the base install has no httpx: docs/edge-agent.md),
one kept-alive connection per pool thread, with a socket timeout equal to what is left of the deadline; the
caller stops waiting at the deadline in any case and answers with the edge model (`edge_fallback`). A call
still queued when its deadline has passed is skipped rather than sent late.

    client = HybridClient("http://cloud:8700", token, threshold=0.7, deadline_s=0.15)
    answers = await client.ask("machine-failure", 3, [record])   # ([{label, probabilities}], "name/version") | None
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from contracts.errors import InputError
from contracts.logs import log_event

__all__ = ["HybridClient"]

logger = logging.getLogger("edgeloop.agent.hybrid")
Answers = tuple[list[dict[str, Any]], str]


class HybridClient:
    def __init__(
        self, url: str, token: str | None, threshold: float, deadline_s: float = 0.15, max_concurrency: int = 4
    ) -> None:
        parts = urllib.parse.urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"hybrid_url {url!r} is not an http(s):// URL; give the cloud's base URL")
        self.url = url.rstrip("/") + "/v1/score"
        self.threshold = threshold
        self.deadline_s = deadline_s
        self._https = parts.scheme == "https"
        self._address = (parts.hostname, parts.port or (443 if self._https else 80))
        self._path = parts.path + "/v1/score"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._headers["Content-Type"] = "application/json"
        self._local = threading.local()  # each pool thread keeps its own connection alive
        self._open: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="hybrid")
        self.failures = 0

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection and whether it was used before (then the server may have closed it)."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = kind(*self._address, timeout=self.deadline_s)
        self._local.conn = conn
        with self._lock:
            self._open.add(conn)
        return conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.conn = None
        with self._lock:
            self._open.discard(conn)

    def _post(self, body: bytes, expires: float) -> tuple[int, bytes]:
        while True:
            conn, reused = self._connection()
            left = expires - time.monotonic()
            if left <= 0:
                raise TimeoutError("the deadline passed before the cloud was asked")
            conn.timeout = left
            if conn.sock is not None:
                conn.sock.settimeout(left)
            try:
                conn.request("POST", self._path, body=body, headers=self._headers)
                response = conn.getresponse()
                data = response.read()
            except ConnectionError:  # a kept-alive connection the cloud closed meanwhile: one new connection
                self._drop(conn)
                if reused:
                    continue
                raise
            except BaseException:
                self._drop(conn)
                raise
            if response.will_close:
                self._drop(conn)
            return response.status, data

    def _call(self, body: bytes, expires: float, size: int) -> Answers | None:
        if time.monotonic() >= expires:
            return None
        status, raw = self._post(body, expires)
        if status >= 400:
            raise http.client.HTTPException(f"cloud answered HTTP {status}: {raw[:120]!r}")
        data = orjson.loads(raw)
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
        with self._lock:
            open_now, self._open = list(self._open), set()
        for conn in open_now:
            conn.close()

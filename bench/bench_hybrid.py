"""Hybrid inference's call to the cloud: the agent's `HybridClient` (standard library http.client, one kept-alive
connection per pool thread, issue 13) against the httpx.Client it replaced (same pool, same deadline), both
asking the same `/v1/score` endpoint served by uvicorn in this process, in interleaved rounds.

    .venv/bin/python bench/bench_hybrid.py [--calls 1000] [--rounds 3]

Prints one row per client: calls, p50 / p99 of `await client.ask(...)` in ms, and failures (edge fallbacks).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

from edge_agent.hybrid import HybridClient

ANSWER = orjson.dumps(
    {"model": "m", "version": 2, "predictions": [{"label": 1, "probabilities": {"0": 0.2, "1": 0.8}}]}
)
RECORD = {"temperature_c": 71.5, "vibration_mm_s": 3.1, "rpm": 1480, "site": "a", "firmware": "1.2"}


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/score")
    async def score(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    return app


class HttpxClient:
    """The replaced implementation (httpx.Client on the same private pool), the baseline."""

    def __init__(self, url: str, deadline_s: float) -> None:
        self.url, self.deadline_s, self.failures = url.rstrip("/") + "/v1/score", deadline_s, 0
        self._http = httpx.Client(headers={"Content-Type": "application/json"}, timeout=httpx.Timeout(deadline_s))
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hybrid")

    def _call(self, body: bytes) -> Any:
        response = self._http.post(self.url, content=body)
        response.raise_for_status()
        return response.json()["predictions"]

    async def ask(self, model: str, version: int, records: list[dict[str, Any]]) -> Any:
        body = orjson.dumps({"model": model, "version": version, "records": records})
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self._pool.submit(self._call, body)), self.deadline_s)
        except Exception:
            self.failures += 1
            return None

    def close(self) -> None:
        self._pool.shutdown()
        self._http.close()


async def _measure(client: Any, calls: int) -> list[float]:
    took = []
    for _ in range(calls):
        started = time.perf_counter()
        await client.ask("m", 2, [RECORD])
        took.append(time.perf_counter() - started)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    clients = {
        "http.client (HybridClient)": HybridClient(url, None, 0.9, 1.0),
        "httpx (baseline)": HttpxClient(url, 1.0),
    }
    results: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(args.rounds):
        for name, client in clients.items():
            asyncio.run(_measure(client, 20))  # warm the connections
            results[name] += asyncio.run(_measure(client, args.calls))
    print(f"hybrid ask(), {args.rounds} interleaved rounds of {args.calls} sequential calls, one record each")
    print(f"{'client':28} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'failures':>9}")
    for name, took in results.items():
        ms = sorted(t * 1000 for t in took)
        p99 = ms[int(len(ms) * 0.99) - 1]
        print(f"{name:28} {len(ms):>6} {statistics.median(ms):>8.3f} {p99:>8.3f} {clients[name].failures:>9}")
    for client in clients.values():
        client.close()
    server.should_exit = True


if __name__ == "__main__":
    main()

"""Several real `edgeloop cloud` replicas for the benches' `--replicas` runs: one PostgreSQL schema (fresh per run),
one MQTT shared-subscription group, one bundles directory, each replica its own port and ingest client id, as in
deploy/compose.yaml. Used by bench_rollout.py and bench_ingest.py.

    with Replicas(tmp, broker_port, keys, count=3) as replicas:
        replicas.urls[0] ...; replicas.windows_ingested() -> per replica; replicas.store -> the shared Store
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType

import httpx

from bench.bench_ingest import free_port
from cloud_sync.store.db import Store

__all__ = ["Replicas", "postgres_url", "replica_counts"]


def postgres_url() -> str:
    """The local PostgreSQL's `test` database (trust auth) as the benches' other runs use it."""
    import sqlalchemy as sa

    for user in ("postgres", "root"):
        url = f"postgresql+psycopg://{user}@127.0.0.1:5432/test"
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
            return url
        except sa.exc.OperationalError:
            continue
        finally:
            engine.dispose()
    raise SystemExit("error: PostgreSQL at 127.0.0.1:5432 database `test` is not reachable (--replicas needs it)")


def replica_counts(text: str) -> list[int]:
    """`--replicas 1,2,3` -> [1, 2, 3]."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"error: --replicas {text!r} must be counts separated by commas, e.g. 1,2,3") from None
    if not counts or min(counts) < 1:
        raise SystemExit(f"error: --replicas {text!r} must name at least one count of 1 or more")
    return counts


class Replicas:
    """`count` replicas of `edgeloop cloud` started together, stopped (SIGTERM) and their schema dropped on exit."""

    def __init__(self, tmp: Path, broker_port: int, keys: Path, count: int, **settings: str) -> None:
        self.tmp = tmp
        self.count = count
        run = uuid.uuid4().hex[:8]
        self.store = Store(postgres_url(), schema=f"bench_replicas_{run}")
        self.urls: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        executable = str(Path(sys.executable).with_name("edgeloop"))
        for index in range(count):
            port = free_port()
            env = {
                **os.environ,
                "EDGELOOP_HOME": str(tmp / f"replica-{index}"),
                "EDGELOOP_LOG_LEVEL": "WARNING",
                "EDGELOOP_CLOUD_KEYS_DIR": str(keys),
                "EDGELOOP_CLOUD_STORE_SCHEMA": self.store.schema or "",
                "EDGELOOP_CLOUD_INGEST_CLIENT_ID": f"bench-{run}-ingest-{index}",
                "EDGELOOP_CLOUD_INGEST_SHARE_GROUP": f"bench-{run}",
                **{f"EDGELOOP_CLOUD_{key.upper()}": value for key, value in settings.items()},
            }
            args = [executable, "cloud", "--port", str(port), "--mqtt-url", f"mqtt://127.0.0.1:{broker_port}",
                    "--store-url", self.store.url, "--bundles-dir", str(tmp / "bundles")]  # fmt: skip
            with open(tmp / f"replica-{index}.log", "ab") as log:
                self.processes.append(subprocess.Popen(args, env=env, stdout=log, stderr=log))
            self.urls.append(f"http://127.0.0.1:{port}")

    def __enter__(self) -> Replicas:
        deadline = time.monotonic() + 120
        for url, process in zip(self.urls, self.processes, strict=True):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"a replica exited; see {self.tmp}/replica-*.log")
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} not ready in 120 s; see {self.tmp}/replica-*.log")
                time.sleep(0.1)
        return self

    def metric(self, name: str) -> list[float]:
        """One unlabelled metric from every replica's /metrics."""
        values = []
        for url in self.urls:
            text = httpx.get(f"{url}/metrics", timeout=30).text
            values.append(next(float(line.split()[1]) for line in text.splitlines() if line.startswith(f"{name} ")))
        return values

    def windows_ingested(self) -> list[int]:
        return [int(value) for value in self.metric("edgeloop_cloud_windows_ingested_total")]

    def leaders(self) -> int:
        return int(sum(self.metric("edgeloop_cloud_leader")))

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.store.drop_all()
        self.store.dispose()

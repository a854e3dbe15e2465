"""The edge agent's footprint on each model runtime (issue 16): start-to-ready, RSS idle and after 10,000
requests, side by side in one run.

    .venv/bin/python bench/bench_runtime_footprint.py                 # trains + converts the rf model in a temp dir
    .venv/bin/python bench/bench_runtime_footprint.py --requests 2000 --rounds 1

For each round, `python -m edge_agent` (the device's start, with a public key, offline) is started once with
`EDGELOOP_AGENT_RUNTIME=onnxruntime` and once with `numpy`, one after the other (interleaved rounds, medians):
wall time and CPU time from spawn to `/readyz` 200, RSS 2 s after ready (idle), then 10,000 single-record
`POST /v1/predict` on one keep-alive connection, the median round trip and the RSS after them. The numpy runtime
never imports onnxruntime, so its figures are those of a device without it. Also printed: the installed size of
the base install (its dependency closure, from metadata) with and without onnxruntime.
Not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from bench_agent_rest import base_install_mb, build_model  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

RUNTIMES = ("onnxruntime", "numpy")


@dataclass
class Samples:
    ready_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    idle_mb: list[float] = field(default_factory=list)
    after_mb: list[float] = field(default_factory=list)
    round_trip_ms: list[float] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ready(port: int, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"agent exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError("agent not ready in time")


def one_run(runtime: str, bundle: Path, public_key: Path, work: Path, requests: int, samples: Samples) -> None:
    port = _free_port()
    env = {**os.environ, "EDGELOOP_AGENT_RUNTIME": runtime, "EDGELOOP_LOG_LEVEL": "WARNING"}
    env["EDGELOOP_HOME"] = str(work / "home")
    state = Path(tempfile.mkdtemp(prefix=f"state-{runtime}-", dir=work))
    args = [sys.executable, "-m", "edge_agent", "--bundle", str(bundle), f"--port={port}", "--state-dir", str(state),
            "--public-key", str(public_key)]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(args, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _ready(port, process)
        samples.ready_s.append(time.monotonic() - started)
        samples.cpu_s.append(_cpu_s(process.pid))
        time.sleep(2)
        samples.idle_mb.append(_rss_mb(process.pid))
        manifest = orjson.loads((bundle / "manifest.json").read_bytes())
        body = orjson.dumps(manifest["golden_samples"][0]["inputs"])
        headers = {"Content-Type": "application/json"}
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        times = []
        for _ in range(requests):
            begin = time.perf_counter()
            connection.request("POST", "/v1/predict", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            times.append(time.perf_counter() - begin)
            if response.status != 200:
                raise RuntimeError(f"predict answered {response.status}")
        connection.close()
        samples.round_trip_ms.append(statistics.median(times) * 1000)
        samples.after_mb.append(_rss_mb(process.pid))
    finally:
        process.terminate()
        process.wait(30)


def _install_sizes() -> tuple[float, float]:
    from importlib.metadata import distribution

    total, _ = base_install_mb()
    onnxruntime = sum(f.size or 0 for f in distribution("onnxruntime").files or []) / 2**20
    return total, total - onnxruntime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120)
    results = {runtime: Samples() for runtime in RUNTIMES}
    with tempfile.TemporaryDirectory(prefix="edgeloop-footprint-") as tmp:
        work = Path(tmp)
        os.environ["EDGELOOP_HOME"] = str(work / "home")
        with console.status("training and converting the rf model"):
            from contracts.logs import configure_logging

            configure_logging("WARNING")
            bundle, _, _ = build_model(work)
        public_key = work / "keys" / "edgeloop-signing.pub"
        for round_ in range(args.rounds):
            for runtime in RUNTIMES if round_ % 2 == 0 else RUNTIMES[::-1]:
                with console.status(f"round {round_ + 1}/{args.rounds}: {runtime}"):
                    one_run(runtime, bundle, public_key, work, args.requests, results[runtime])
    with_ort, without_ort = _install_sizes()
    table = Table(title=f"python -m edge_agent, rf bundle, medians of {args.rounds} rounds ({os.cpu_count()} cores)")
    table.add_column("runtime")
    table.add_column("start to ready s", justify="right")
    table.add_column("CPU to ready s", justify="right")
    table.add_column("RSS idle MB", justify="right")
    table.add_column(f"RSS after {args.requests:,} req MB", justify="right")
    table.add_column("round trip p50 ms", justify="right")
    table.add_column("base install MB", justify="right")
    for runtime, samples in results.items():
        table.add_row(
            runtime,
            f"{statistics.median(samples.ready_s):.2f}",
            f"{statistics.median(samples.cpu_s):.2f}",
            f"{statistics.median(samples.idle_mb):.1f}",
            f"{statistics.median(samples.after_mb):.1f}",
            f"{statistics.median(samples.round_trip_ms):.3f}",
            f"{with_ort if runtime == 'onnxruntime' else without_ort:.0f}",
        )
    console.print(table)
    console.print(
        "Goals (issue 16, x86): numpy runtime <= 60 MB RSS idle; onnxruntime <= 120 MB; base install <= 200 MB with "
        "onnxruntime. 'base install' for numpy is the same closure without onnxruntime (a device that lacks it)."
    )


if __name__ == "__main__":
    main()

"""REST speed and footprint of the edge agent against `mlflow models serve` and two bare references, one run.

    .venv/bin/python bench/bench_agent_rest.py                      # builds an rf bundle in a temp dir
    .venv/bin/python bench/bench_agent_rest.py --duration 10 --skip-mlflow
    .venv/bin/python bench/bench_agent_rest.py --skip-mlflow --pin --tail 10       # the latency tail at c=1
    .venv/bin/python bench/bench_agent_rest.py --skip-mlflow --baseline /tmp/before  # an older checkout too

Same model (the trainer's 100-tree random forest, converted by the converter), same machine, same load
(`wrk -t1`, one worker per server, loopback, keep-alive), servers measured one after the other:

- agent: `python -m edge_agent` — full path: bearer auth, body cap, schema check, metrics, prediction ids,
  and (with a private Mosquitto, when installed) telemetry counting on every prediction.
- bare FastAPI: a pydantic body model and onnxruntime, nothing else (the issue's reference endpoint).
- lean Starlette: one route, orjson decode, onnxruntime (the ceiling of a Python route on uvicorn).
- mlflow: `mlflow models serve --env-manager local` on the sklearn pipeline of the same run.
- the agent's other protocols, rows `same agent, ...`: the same record through Open Inference Protocol V2
  (`POST /v2/models/{name}/infer`, JSON tensors) and MLflow's `POST /invocations` (`dataframe_records`), on the
  agent process above, in the same rounds; their req/s are also given as a ratio of `/v1/predict`'s.

Servers run side by side and are loaded in interleaved rounds (medians reported), so that the background
load of a shared machine does not favour one of them. Prints req/s, p50 and p99 at concurrency 1 and 16, RSS
after the load, process start to ready, the ratios, and the installed size of the base install (the
agent's dependency closure, from the venv's metadata).
Needs `wrk` (apt-get install wrk). Not a test: numbers depend on the machine and its load.

wrk's percentiles are corrected for coordinated omission: at the end of a run it adds, for every response
slower than the mean interval between requests, the samples a constant-rate client would have seen
meanwhile (`stats_correct` in wrk.c). At concurrency 1 (~0.35 ms per request) one 10 ms stall becomes ~30
samples, so wrk's p99 there is set by how often the server (or wrk) was off the CPU for long, not by the
per-request latency. `--tail S` adds, per round, an S-second run at concurrency 1 with a plain keep-alive
client that times every round trip (uncorrected p50 / p99 / p99.9 / max), and counts the server's
involuntary context switches meanwhile (the kernel took its CPU away: another process on the core).
`--pin` puts the servers on the first CPU and the load (wrk, that client, Mosquitto) on the second, so the
two never compete for one core. `--baseline DIR` also runs `python -m edge_agent` from DIR, another checkout
(e.g. `git worktree add /tmp/before HEAD~1`), side by side with the current one: a before/after comparison;
`--baseline-env KEY=VALUE` sets a variable for that agent only (`--baseline . --baseline-env
EDGELOOP_AGENT_MICRO_BATCH=false`: the same code with one setting changed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


@dataclass
class Result:
    name: str
    start_s: float
    rss_mb: float = 0.0
    rates: dict[int, tuple[float, float, float, int]] = field(default_factory=dict)
    """concurrency -> (req/s, p50 ms, p99 ms, non-2xx + socket errors)"""
    tail: tuple[float, float, float, float, float, int] | None = None
    """--tail: (p50, p99, p99.9, max ms, involuntary context switches per 1,000 requests, requests)"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_model(work: Path) -> tuple[Path, str, str]:
    """Train and convert the rf model in `work`; returns (bundle, tracking uri, mlflow model uri)."""
    from converter.convert import convert_model
    from converter.settings import ConvertSettings
    from trainer.sample_data import write_machines
    from trainer.settings import TrainSettings
    from trainer.train import train_model

    data = write_machines(work / "machines.csv", rows=6000)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    result = train_model(data, "failure_24h", "machine-failure", "rf", ["reading_id"],
                         TrainSettings(tracking_uri=tracking, artifact_root=work / "artifacts"))  # fmt: skip
    bundle = work / "bundle"
    convert_model(f"machine-failure/{result.version}", bundle,
                  ConvertSettings(tracking_uri=tracking, keys_dir=work / "keys"))  # fmt: skip
    return bundle, tracking, f"runs:/{result.run_id}/model"


_REFERENCE_APPS = """
import os
from pathlib import Path

import orjson
from fastapi import FastAPI
from pydantic import create_model
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contracts.bundle import load_bundle
from contracts.runtime import OnnxModel, encode_records

model = OnnxModel.load(load_bundle(Path(os.environ["BENCH_BUNDLE"])), intra_op_threads=1)
specs = model.manifest.inputs
classes = [str(c) for c in model.manifest.classes]
fields = {s.name: ((float | None) if s.kind == "numeric" else (str | None), ...) for s in specs}
Record = create_model("Record", **fields)


def answer(record):
    result = model.predict_feed(encode_records([record], specs))
    return {"label": result.labels.tolist()[0], "probabilities": dict(zip(classes, result.probabilities.tolist()[0]))}


bare = FastAPI()


@bare.post("/v1/predict")
async def predict(record: Record):
    return answer(record.model_dump())


@bare.get("/healthz")
async def healthz():
    return {"status": "ok"}


async def lean_predict(request: Request) -> Response:
    return Response(orjson.dumps(answer(orjson.loads(await request.body()))), media_type="application/json")


async def lean_health(request: Request) -> Response:
    return Response(b"ok")


lean = Starlette(routes=[Route("/v1/predict", lean_predict, methods=["POST"]), Route("/healthz", lean_health)])
"""


def wait_ready(process: subprocess.Popen[bytes], url: str, started: float, timeout: float = 120.0) -> float:
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def tree_rss_mb(pid: int) -> float:
    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in processes if p.is_running()) / 2**20


def run_wrk(url: str, script: Path, connections: int, duration: float) -> tuple[float, float, float, int]:
    args = [*LOAD_PREFIX, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
            "-s", str(script), url]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50, p99 = (_latency_ms(out, percent) for percent in ("50%", "99%"))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return rate, p50, p99, errors


def _latency_ms(wrk_output: str, percent: str) -> float:
    found = re.search(percent + r"\s+([\d.]+)(us|ms|s)", wrk_output)
    assert found is not None, wrk_output
    return float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]


LOAD_PREFIX: list[str] = []
"""`taskset -c CPU` for the load generators with --pin (wrk, Mosquitto), else nothing."""


def round_trips(url: str, body: bytes, headers: dict[str, str], seconds: float) -> np.ndarray:
    """Time every round trip (ns) of one keep-alive connection for `seconds`: no coordinated-omission
    correction, and ~20 µs of Python per request on top of the server's time."""
    host, _, rest = url.removeprefix("http://").partition("/")
    address, _, port = host.partition(":")
    lines = [f"POST /{rest} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    samples = np.zeros(int(seconds * 50_000) + 1, dtype=np.int64)
    count, buffer = 0, b""
    with socket.create_connection((address, int(port))) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        end = time.perf_counter_ns() + int(seconds * 1e9)
        while count < samples.size:
            started = time.perf_counter_ns()
            sock.sendall(request)
            while b"\r\n\r\n" not in buffer:
                buffer += sock.recv(65536)
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{url}: {head.splitlines()[0].decode()}")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(buffer) < length:
                buffer += sock.recv(65536)
            buffer = buffer[length:]
            finished = time.perf_counter_ns()
            samples[count] = finished - started
            count += 1
            if finished > end:
                break
    return samples[:count]


def involuntary_switches(pid: int) -> int:
    """Involuntary context switches of a server's processes so far (all threads)."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            for task in Path(f"/proc/{process.pid}/task").iterdir():
                status = (task / "status").read_text()
                total += int(re.search(r"nonvoluntary_ctxt_switches:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return total


def lua(path: Path, body: bytes, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{key}"] = "{value}"' for key, value in headers.items()]
    lines.append(f"wrk.body = [==[{body.decode()}]==]")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Server:
    result: Result
    process: subprocess.Popen[bytes]
    url: str
    script: Path
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    samples: dict[int, list[tuple[float, float, float, int]]] = field(default_factory=dict)
    tails: list[np.ndarray] = field(default_factory=list)
    switches: list[float] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start(name: str, cmd: list[str], env: dict[str, str], ready: str, url: str, script: Path) -> Server:
    """Start one server and time process start -> ready (nothing else runs meanwhile)."""
    started = time.monotonic()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    server = Server(Result(name, 0.0), process, url, script)
    try:
        server.result.start_s = wait_ready(process, ready, started)
        run_wrk(url, script, 4, 1)  # warm up
    except BaseException:
        server.stop()
        raise
    return server


def load_rounds(servers: list[Server], concurrencies: list[int], duration: float, rounds: int,
                tail: float = 0.0) -> None:  # fmt: skip
    """Interleave the servers (round robin) so that the machine's background load hits all of them alike;
    each figure is the median over the rounds (--tail: percentiles over all rounds' round trips)."""
    for number in range(rounds):
        print(f"round {number + 1}/{rounds} ...", flush=True)
        for connections in concurrencies:
            for server in servers:
                sample = run_wrk(server.url, server.script, connections, duration)
                server.samples.setdefault(connections, []).append(sample)
        for server in servers if tail > 0 else []:
            before = involuntary_switches(server.process.pid)
            trips = round_trips(server.url, server.body, server.headers, tail)
            server.switches.append((involuntary_switches(server.process.pid) - before) * 1000 / trips.size)
            server.tails.append(trips)
    for server in servers:
        if server.tails:
            trips = np.concatenate(server.tails) / 1e6
            p50, p99, p999 = np.percentile(trips, [50, 99, 99.9])
            switches = sorted(server.switches)[len(server.switches) // 2]
            server.result.tail = (p50, p99, p999, float(trips.max()), switches, trips.size)
        for connections, samples in server.samples.items():
            median = [sorted(sample[i] for sample in samples)[len(samples) // 2] for i in range(3)]
            errors = sum(sample[3] for sample in samples)
            server.result.rates[connections] = (median[0], median[1], median[2], errors)
        server.result.rss_mb = tree_rss_mb(server.process.pid)


def base_install_mb() -> tuple[float, list[str]]:
    """Installed size of edgeloop's base requirements and their dependencies (no extras), from metadata."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    seen: dict[str, float] = {}
    todo = [Requirement(r) for r in distribution("edgeloop").requires or []]
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        key = requirement.name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            continue
        seen[key] = sum(f.size or 0 for f in dist.files or []) / 2**20
        extras = set(requirement.extras)
        for child in dist.requires or []:
            parsed = Requirement(child)
            if parsed.marker is None or any(parsed.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append(parsed)
    return sum(seen.values()), sorted(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (with --mlflow-uri and --tracking-uri)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI of the bundle's run")
    parser.add_argument("--mlflow-uri", help="MLflow model URI of the same model (runs:/RUN/model)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--tail", type=float, default=0.0, metavar="S",
                        help="per round, S seconds at c=1 timing every round trip (no wrk correction)")  # fmt: skip
    parser.add_argument("--pin", action="store_true", help="servers on the first CPU, the load on the second")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the agent from DIR, another checkout of edgeloop (before/after)")  # fmt: skip
    parser.add_argument("--baseline-env", action="append", default=[], metavar="KEY=VALUE",
                        help="a variable of the baseline agent's environment only (repeatable), e.g. "
                        "--baseline . --baseline-env EDGELOOP_AGENT_MICRO_BATCH=false")  # fmt: skip
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            sys.exit("--pin needs two CPUs")
        SERVER_PREFIX[:] = ["taskset", "-c", str(cpus[0])]
        LOAD_PREFIX[:] = ["taskset", "-c", str(cpus[1])]
        os.sched_setaffinity(0, {cpus[1]})  # this process times round trips (--tail): the load side
    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    try:
        if args.bundle:
            bundle, tracking, mlflow_uri = args.bundle, args.tracking_uri, args.mlflow_uri
            if not (tracking and mlflow_uri):
                args.skip_mlflow = True
        else:
            print("building the rf bundle (trainer + converter) ...", flush=True)
            bundle, tracking, mlflow_uri = build_model(work)
        results = run_all(args, work, bundle, tracking, mlflow_uri)
        report(results, args.concurrency)
    finally:
        shutil.rmtree(work, ignore_errors=True)


SERVER_PREFIX: list[str] = []
"""`taskset -c CPU` for the servers with --pin, else nothing."""


def run_all(args: argparse.Namespace, work: Path, bundle: Path, tracking: str | None,
            mlflow_uri: str | None) -> list[Result]:  # fmt: skip
    python = sys.executable
    bindir = str(Path(python).parent)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}", "EDGELOOP_HOME": str(work / "home"),
           "EDGELOOP_LOG_LEVEL": "WARNING", "BENCH_BUNDLE": str(bundle), "PYTHONPATH": f"{work}:{ROOT}"}  # fmt: skip
    (work / "bench_reference_apps.py").write_text(textwrap.dedent(_REFERENCE_APPS))
    manifest = orjson.loads((bundle / "manifest.json").read_bytes())
    record = manifest["golden_samples"][0]["inputs"]
    body = orjson.dumps(record)
    public_key = bundle.parent / "keys" / "edgeloop-signing.pub"
    key_args = ["--public-key", str(public_key)] if public_key.is_file() else []
    cases: list[tuple[str, list[str], str, str, bytes, dict[str, str]]] = []
    port = free_port()
    agent_cmd = [python, "-m", "edge_agent", "--bundle", str(bundle), "--state-dir", str(work / "agent"),
                 "--port", str(port), "--token", TOKEN, *key_args]  # fmt: skip
    broker = start_broker(work)  # with a broker the agent also counts telemetry (drift) on every prediction
    if broker is not None:
        agent_cmd += ["--mqtt-url", f"mqtt://127.0.0.1:{broker[1]}"]
    base = f"http://127.0.0.1:{port}"
    label = "edgeloop agent (full path" + (", MQTT + telemetry)" if broker else ", offline)")
    cases.append((label, agent_cmd, f"{base}/readyz", f"{base}/v1/predict", body,
                  {"Authorization": f"Bearer {TOKEN}"}))  # fmt: skip
    if args.baseline:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        old = [*agent_cmd[:6], str(work / "agent-baseline"), "--port", str(port), *agent_cmd[9:]]
        old += ["--device-id", "bench-baseline"]  # its own MQTT client id: the same one would evict the other
        settings = f", {' '.join(args.baseline_env)}" if args.baseline_env else ""
        cases.append((f"baseline agent ({args.baseline}{settings})", old, f"{base}/readyz", f"{base}/v1/predict", body,
                      {"Authorization": f"Bearer {TOKEN}"}))  # fmt: skip
    for name, app in (("bare FastAPI + ORT", "bare"), ("lean Starlette + orjson + ORT", "lean")):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [python, "-m", "uvicorn", f"bench_reference_apps:{app}", "--port", str(port), "--log-level",
               "warning", "--no-access-log"]  # fmt: skip
        cases.append((name, cmd, f"{base}/healthz", f"{base}/v1/predict", body, {}))
    if not args.skip_mlflow and tracking and mlflow_uri:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [python, "-m", "mlflow", "models", "serve", "-m", mlflow_uri, "--env-manager", "local",
               "-p", str(port), "-w", "1"]  # fmt: skip
        env["MLFLOW_TRACKING_URI"] = tracking
        mlflow_body = orjson.dumps({"dataframe_records": [record]})
        cases.append(("mlflow models serve", cmd, f"{base}/ping", f"{base}/invocations", mlflow_body, {}))
    servers: list[Server] = []
    try:
        for name, cmd, ready, url, payload, headers in cases:
            print(f"starting {name} ...", flush=True)
            own_env = env
            if name.startswith("baseline agent"):  # the other checkout's packages come first on the path
                # PYTHONSAFEPATH: `python -m` would put the working directory (this checkout) first on the path,
                # ahead of PYTHONPATH, and the "baseline" would run this checkout's code (it did, before 2026-12-06)
                own_env = {**env, "PYTHONPATH": f"{work}:{args.baseline.resolve()}", "PYTHONSAFEPATH": "1"}
                own_env.update(item.split("=", 1) for item in args.baseline_env)
            server = start(name, [*SERVER_PREFIX, *cmd], own_env, ready, url,
                           lua(work / f"{len(servers)}.lua", payload, headers))  # fmt: skip
            server.body, server.headers = payload, headers
            servers.append(server)
            if server.result.name == label:  # its other protocols: same process, same record, same rounds
                for route, route_url, route_body in _protocol_routes(url, manifest, record):
                    script = lua(work / f"{len(servers)}.lua", route_body, headers)
                    run_wrk(route_url, script, 4, 1)  # warm up
                    row = Result(f"  same agent, {route}", server.result.start_s)
                    servers.append(Server(row, server.process, route_url, script, route_body, headers))
        load_rounds(servers, args.concurrency, args.duration, args.rounds, args.tail)
    finally:
        for server in servers:
            server.stop()
        if broker is not None:
            broker[0].terminate()
            broker[0].wait(10)
    return [server.result for server in servers]


def _protocol_routes(predict_url: str, manifest: dict, record: dict) -> list[tuple[str, str, bytes]]:
    """(label, URL, body) of the same record through Open Inference Protocol V2 and MLflow's /invocations."""
    base = predict_url.removesuffix("/v1/predict")
    tensors = [
        {"name": spec["name"], "shape": [1, 1], "datatype": "FP32" if spec["kind"] == "numeric" else "BYTES",
         "data": [record[spec["name"]]]}
        for spec in manifest["inputs"]
    ]  # fmt: skip
    return [
        (
            "POST /v2/models/{name}/infer",
            f"{base}/v2/models/{manifest['name']}/infer",
            orjson.dumps({"inputs": tensors}),
        ),
        ("POST /invocations", f"{base}/invocations", orjson.dumps({"dataframe_records": [record]})),
    ]


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    """A private Mosquitto for the agent, when mosquitto is installed."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        print("mosquitto not found: the agent runs offline (no telemetry counting)")
        return None
    port = free_port()
    config = work / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n")  # as deploy/mosquitto
    process = subprocess.Popen([*LOAD_PREFIX, binary, "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("mosquitto did not start")


def report(results: list[Result], concurrencies: list[int]) -> None:
    head = (
        "| server | "
        + " | ".join(f"c={c} req/s | c={c} p50 / p99 ms" for c in concurrencies)
        + " | RSS MB | start→ready s |"
    )
    print()
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in results:
        cells = []
        for c in concurrencies:
            rate, p50, p99, errors = r.rates[c]
            cells.append(f"{rate:,.0f}{f' ({errors} errors)' if errors else ''} | {p50:.2f} / {p99:.2f}")
        print(f"| {r.name} | " + " | ".join(cells) + f" | {r.rss_mb:.0f} | {r.start_s:.2f} |")
    agent = results[0]
    print()
    for other in results[1:]:
        if other.name.startswith("  same agent"):
            ratios = ", ".join(f"c={c}: {other.rates[c][0] / agent.rates[c][0]:.2f}x" for c in concurrencies)
            print(f"{other.name.strip()} / POST /v1/predict: {ratios}")
            continue
        ratios = ", ".join(f"c={c}: {agent.rates[c][0] / other.rates[c][0]:.1f}x" for c in concurrencies)
        print(f"agent / {other.name}: {ratios}; RSS {agent.rss_mb / other.rss_mb:.2f}x")
    tails = [r for r in results if r.tail is not None]
    if tails:
        print("\nc=1, every round trip timed by a plain client (no coordinated-omission correction):\n")
        print("| server | p50 ms | p99 ms | p99.9 ms | max ms | involuntary switches / 1k req | requests |")
        print("|---|---|---|---|---|---|---|")
        for r in tails:
            p50, p99, p999, top, switches, count = r.tail  # type: ignore[misc]
            print(f"| {r.name} | {p50:.2f} | {p99:.2f} | {p999:.2f} | {top:.1f} | {switches:.0f} | {count:,} |")
    size, names = base_install_mb()
    print(f"\nbase install (edgeloop's base requirements + dependencies, {len(names)} distributions): {size:.0f} MB")


if __name__ == "__main__":
    main()

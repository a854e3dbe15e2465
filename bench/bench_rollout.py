"""Rollout reach: how long from `deploy` until every device of a large group runs the new version, and until
the cloud has seen every device report it. The real `edgeloop cloud` (SQLite store) and a private Mosquitto;
the fleet is `cloud_sync.fleet.simulator.SimDevice` (one MQTT connection each, the agent's wire behaviour: desired
state, version policy, retained reported state, `deployed` events), driven by `cloud_sync.fleet.sim_fleet.SimFleet`
(one epoll thread per worker process, 1,000 devices per worker by default).

    .venv/bin/python bench/bench_rollout.py                      # 1,000, 2,000 and 5,000 devices
    .venv/bin/python bench/bench_rollout.py --devices 10000 --per-worker 1000
    .venv/bin/python bench/bench_rollout.py --devices 10000 --staged-only     # the four stages only

Why SimFleet: with paho's own network thread per client (`SimDevice.start()`), each device costs a thread and
three descriptors, select() caps a process at ~330 devices, and 5,000 idle devices (20 processes x 250
threads) used both cores of this machine: the cloud got ~1 % CPU and the deploy failed with 503 (a PUBACK
not received in 10 s). One epoll loop per process costs one descriptor per device and little CPU when idle.

For each fleet size, three rollouts through the REST API that `edgeloop deploy` calls (POST /v1/rollouts):
- `--canary 0`: published to the group at once;
- `--canary 1%`, soak 0: the canary first, then the group (one controller tick, rollout_tick_s = 0.2 s);
- `--stages 1%,10%,50%,100%`, soak 0: four stages (issue 21). Its second table has the time per stage from the
  audit log: stage k runs from its start (the deploy, or the `widen` entry that began it) to the next `widen`
  (or the `promote`); its devices were switched (device-level desired states), confirmed and checked in it.
  The 100 % stage is the promotion (the group topic): it ends when the last simulated device runs the version.
Columns: `deploy call` = the POST's duration (for `--canary 0` it includes the promotion: the group publish,
clearing the recorded device-level overrides, the status answer), `devices switched` = until the last simulated
device applied it, `cloud sees all` = until GET /v1/rollouts/{id}?devices=false counts every device on target
(their reported state ingested). Not a test: numbers depend on the machine and its load. The model is trained
once into a temp dir; v2 and v3 are its manifest re-signed with a higher version (the simulated devices do not
download).

    .venv/bin/python bench/bench_rollout.py --replicas 1,2,3 --devices 2000

`--replicas`: the same two rollouts of the first --devices size against 1, 2, 3 `edgeloop cloud` replicas on one
PostgreSQL schema and one shared subscription (bench/replicas.py), deployed through replica 1 and followed through
the last replica; each row's ratio is against the 1-replica run of the same invocation, and the run checks one
leader and one `promote` audited per rollout.

Results and the ceiling on the 2-CPU development machine: docs/cloud.md, "Fleet scale".
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.bench_ingest import free_port, start_broker

CTX = mp.get_context("spawn")
GROUP = "bench-fleet"
NAME = "bench-model"


def make_bundles(tmp: Path) -> tuple[Path, list[Path]]:
    """A trained, converted bundle (v1) and the same model re-signed as v2 to v4; returns (keys_dir, bundles)."""
    from contracts.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, Manifest, canonical_bytes
    from contracts.signing import PRIVATE_KEY_FILE, load_private_key, sign_bytes
    from converter.convert import convert_model
    from converter.settings import ConvertSettings
    from trainer.sample_data import write_machines
    from trainer.settings import TrainSettings
    from trainer.train import train_model

    tracking, keys = f"sqlite:///{tmp / 'mlflow.db'}", tmp / "keys"
    data = write_machines(tmp / "machines.csv", rows=1000)
    result = train_model(data, "failure_24h", NAME, "logreg", ["reading_id"],
                         TrainSettings(tracking_uri=tracking, artifact_root=tmp / "artifacts"))  # fmt: skip
    v1 = tmp / f"{NAME}-v1"
    convert_model(f"{NAME}/{result.version}", v1, ConvertSettings(tracking_uri=tracking, keys_dir=keys))
    manifest = Manifest.model_validate_json((v1 / MANIFEST_FILE).read_bytes())
    bundles = [v1]
    for version in (2, 3, 4):
        edited = manifest.model_copy(update={"version": version})
        target = tmp / f"{NAME}-v{version}"
        target.mkdir()
        shutil.copyfile(v1 / MODEL_FILE, target / MODEL_FILE)
        (target / MANIFEST_FILE).write_bytes(edited.to_json_bytes())
        signature = sign_bytes(canonical_bytes(edited), load_private_key(keys / PRIVATE_KEY_FILE))
        (target / SIGNATURE_FILE).write_bytes(signature)
        bundles.append(target)
    return keys, bundles


def fleet_worker(port: int, ids: list[str], ready: Any, stop: Any, out: Any) -> None:
    """Runs `ids` as SimDevices on v1 in one `SimFleet` (one network thread); reports ("ready", n) once connected,
    then (version, when) each time all of them run a new version."""
    from cloud_sync.fleet.sim_fleet import SimFleet
    from cloud_sync.fleet.simulator import SimDevice

    fleet = SimFleet()
    for index, device_id in enumerate(ids):
        for attempt in range(5):  # a loaded machine's broker may not accept within paho's connect timeout
            try:
                fleet.add(SimDevice(device_id, GROUP, "127.0.0.1", port, model=(NAME, 1)))
                break
            except OSError:
                if attempt == 4:
                    raise
                time.sleep(1.0)
        if index % 200 == 199:
            time.sleep(0.05)  # do not overrun the broker's listen backlog
    fleet.start()
    devices = fleet.devices
    out.put(("ready", len(devices)))
    ready.wait()
    seen = 1
    while not stop.is_set():
        versions = {d.model[1] if d.model else None for d in devices}
        if len(versions) == 1 and (version := versions.pop()) is not None and version > seen:
            out.put((version, time.time()))
            seen = version
        time.sleep(0.02)
    fleet.stop()


def stop_fleet(stop: Any, procs: list[Any]) -> None:
    """Tell the fleet workers to stop; a worker still alive after 60 s is killed."""
    stop.set()
    for proc in procs:
        proc.join(60)
        if proc.is_alive():
            proc.kill()


def start_cloud(tmp: Path, port: int, keys: Path) -> tuple[subprocess.Popen[bytes], str]:
    api_port = free_port()
    env = {
        **os.environ,
        "EDGELOOP_HOME": str(tmp / "home"),
        "EDGELOOP_LOG_LEVEL": "WARNING",
        "EDGELOOP_CLOUD_KEYS_DIR": str(keys),
        "EDGELOOP_CLOUD_ROLLOUT_TICK_S": "0.2",
        "EDGELOOP_CLOUD_ALERT_TICK_S": "3600",
        "EDGELOOP_CLOUD_ONLINE_TIMEOUT_S": "3600",
    }
    executable = Path(sys.executable).with_name("edgeloop")
    args = [str(executable), "cloud", "--port", str(api_port), "--mqtt-url", f"mqtt://127.0.0.1:{port}",
            "--store-url", f"sqlite:///{tmp / 'cloud.db'}", "--bundles-dir", str(tmp / "bundles")]  # fmt: skip
    log = open(tmp / "cloud.log", "ab")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(args, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{api_port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"edgeloop cloud did not start; see {tmp / 'cloud.log'}")


def upload(url: str, bundle: Path) -> None:
    from cloud_sync.store.bundles import bundle_tar

    httpx.put(f"{url}/v1/bundles", content=bundle_tar(bundle), timeout=60).raise_for_status()


STAGES = [1, 10, 50, 100]


def rollout(
    url: str, out: Any, workers: int, devices: int, version: int, canary: str | None, observer: str | None = None
) -> dict[str, float]:
    """Deploy through `url`; the cloud's view is read from `observer` (another replica) when given. `canary` None:
    the staged rollout (STAGES); the result has `start` and `switched_at` (epoch s) too."""
    body: dict[str, Any] = {"model_name": NAME, "model_version": version, "group": GROUP, "soak_minutes": 0}
    body |= {"canary": canary} if canary is not None else {"stages": STAGES}
    start = time.time()
    response = httpx.post(f"{url}/v1/rollouts", json=body, timeout=600)
    response.raise_for_status()
    posted = time.time()
    rollout_id = response.json()["id"]
    done = 0
    switched = start
    while done < workers:
        got_version, when = out.get(timeout=600)
        if got_version == version:
            done += 1
            switched = max(switched, when)
    while True:
        status = httpx.get(f"{observer or url}/v1/rollouts/{rollout_id}?devices=false", timeout=120).json()
        if status["on_target"] == devices and status["state"] == "promoted":
            break
        if time.time() - start > 600:
            raise RuntimeError(f"rollout {rollout_id} stuck: {status['state']}, {status['on_target']}/{devices}")
        time.sleep(0.2)
    seen = time.time()
    return {"post": posted - start, "switched": switched - start, "seen": seen - start, "start": start,
            "switched_at": switched}  # fmt: skip


def stage_times(url: str, result: dict[str, float], devices: int) -> list[tuple[str, int, float]]:
    """(stage, devices it switched, seconds) of the staged rollout, from the audit log (module doc)."""
    from datetime import datetime

    def at(entry: dict[str, Any]) -> float:
        return datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).timestamp()

    entries = httpx.get(f"{url}/v1/audit?format=json", timeout=120).json()
    mine = [e for e in entries if at(e) >= result["start"] - 1]
    bounds = [result["start"]] + [at(e) for e in mine if e["action"] in ("widen", "promote")]
    bounds.append(result["switched_at"])
    switched = [0] * len(STAGES)
    for entry in mine:
        if entry["action"] == "switch":
            switched[entry["details"]["stage"] - 1] += len(entry["details"]["devices"])
    switched[-1] = switched[-1] or devices - sum(switched)  # the promotion: the rest through the group topic
    rows = []
    for index, share in enumerate(STAGES):
        label = f"stage {index + 1}/{len(STAGES)} ({share}%)" + (" = promotion" if share == 100 else "")
        rows.append((label, switched[index], bounds[index + 1] - bounds[index]))
    return rows


def run(
    devices: int, workers: int, keys: Path, bundles: list[Path], staged_only: bool = False
) -> tuple[list[tuple[str, dict[str, float]]], list[tuple[str, int, float]]]:
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-rollout-") as name:
        tmp = Path(name)
        broker, port = start_broker(tmp)
        cloud, url = start_cloud(tmp, port, keys)
        ready, stop, out = CTX.Event(), CTX.Event(), CTX.Queue()
        ids = [f"sim-{i:05d}" for i in range(devices)]
        procs = [
            CTX.Process(target=fleet_worker, args=(port, ids[w::workers], ready, stop, out)) for w in range(workers)
        ]
        try:
            for bundle in bundles:
                upload(url, bundle)
            began = time.time()
            for proc in procs:
                proc.start()
            for _ in procs:
                assert out.get(timeout=600)[0] == "ready"
            print(f"  {devices:,} devices connected in {time.time() - began:.1f}s", flush=True)
            while (known := len(httpx.get(f"{url}/v1/devices?group={GROUP}", timeout=120).json())) < devices:
                if time.time() - began > 300:
                    raise RuntimeError(f"only {known} of {devices} devices known to the cloud; see {tmp}/cloud.log")
                time.sleep(0.5)
            print(f"  {devices:,} devices connected and known to the cloud in {time.time() - began:.1f}s", flush=True)
            ready.set()
            rows = []
            if not staged_only:
                rows.append(("canary 0 (group at once)", rollout(url, out, workers, devices, 2, "0")))
                print(f"  canary 0: {rows[-1][1]}", flush=True)
                rows.append(("canary 1%, soak 0", rollout(url, out, workers, devices, 3, "1%")))
                print(f"  canary 1%: {rows[-1][1]}", flush=True)
            rows.append(("stages 1,10,50,100%, soak 0", rollout(url, out, workers, devices, 4, None)))
            return rows, stage_times(url, rows[-1][1], devices)
        finally:
            stop_fleet(stop, procs)
            cloud.terminate()
            cloud.wait(30)
            broker.terminate()
            broker.wait(10)


def run_replicated(
    devices: int, workers: int, keys: Path, bundles: list[Path], replicas_n: int
) -> list[tuple[str, dict[str, float]]]:
    """`run`'s two rollouts against `replicas_n` replicas on PostgreSQL: deployed through the first replica, the
    cloud's view read from the last; adds `leaders` and `promotes` (audited per rollout) to each result."""
    from bench.replicas import Replicas

    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-rollout-replicas-") as name:
        tmp = Path(name)
        broker, port = start_broker(tmp)
        ready, stop, out = CTX.Event(), CTX.Event(), CTX.Queue()
        ids = [f"sim-{i:05d}" for i in range(devices)]
        procs = [
            CTX.Process(target=fleet_worker, args=(port, ids[w::workers], ready, stop, out)) for w in range(workers)
        ]
        try:
            with Replicas(tmp, port, keys, replicas_n, rollout_tick_s="0.2", alert_tick_s="3600",
                          online_timeout_s="3600") as group:  # fmt: skip
                deployer, observer = group.urls[0], group.urls[-1]
                for bundle in bundles:
                    upload(deployer, bundle)
                for proc in procs:
                    proc.start()
                for _ in procs:
                    assert out.get(timeout=600)[0] == "ready"
                began = time.time()
                while len(httpx.get(f"{observer}/v1/devices?group={GROUP}", timeout=120).json()) < devices:
                    if time.time() - began > 300:
                        raise RuntimeError(f"not every device known to the cloud; see {tmp}/replica-*.log")
                    time.sleep(0.5)
                ready.set()
                rows: list[tuple[str, dict[str, float]]] = []
                promoted_before = 0
                for label, version, canary in (("canary 0 (group at once)", 2, "0"), ("canary 1%, soak 0", 3, "1%")):
                    result = rollout(deployer, out, workers, devices, version, canary, observer=observer)
                    time.sleep(1.0)  # five controller ticks: a second promote would be audited by now
                    audit = httpx.get(f"{observer}/v1/audit", timeout=60).json()
                    promoted = sum(1 for row in audit if row["action"] == "promote")
                    result["promotes"], promoted_before = promoted - promoted_before, promoted
                    result["leaders"] = group.leaders()
                    rows.append((label, result))
                    print(f"  {replicas_n} replicas, {label}: {result}", flush=True)
                return rows
        finally:
            stop_fleet(stop, procs)
            broker.terminate()
            broker.wait(10)


def replicas_table(counts: list[int], devices: int, per_worker: int, keys: Path, bundles: list[Path]) -> None:
    table = []
    baseline: dict[str, dict[str, float]] = {}
    for replicas_n in counts:
        print(f"{replicas_n} replicas, {devices:,} devices ...", flush=True)
        for label, result in run_replicated(devices, -(-devices // per_worker), keys, bundles, replicas_n):
            base = baseline.setdefault(label, result)
            table.append((f"{replicas_n} replicas, {label}", result, base))
    print(f"\n{devices:,} devices, `edgeloop cloud` x N on PostgreSQL (deploy via replica 1, status from replica N)")
    print(f"{'rollout':<40}{'deploy call s':>14}{'devices switched s':>20}{'cloud sees all s':>18}"
          f"{'sees all vs 1':>15}{'leaders':>9}{'promotes':>10}")  # fmt: skip
    for label, result, base in table:
        ratio = result["seen"] / base["seen"]
        print(f"{label:<40}{result['post']:>14.2f}{result['switched']:>20.2f}{result['seen']:>18.2f}"
              f"{ratio:>14.2f}x{result['leaders']:>9.0f}{result['promotes']:>10.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 2000, 5000], help="fleet sizes")
    parser.add_argument("--per-worker", type=int, default=1000, help="devices per simulator process")
    parser.add_argument("--replicas", help="instead: the first --devices size, N replicas on PostgreSQL, e.g. 1,2,3")
    parser.add_argument("--staged-only", action="store_true", help="only the staged rollout (v1 -> v4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-bundles-") as name:
        keys, bundles = make_bundles(Path(name))
        if args.replicas:
            from bench.replicas import replica_counts

            replicas_table(replica_counts(args.replicas), args.devices[0], args.per_worker, keys, bundles)
            return
        table, per_stage = [], []
        for devices in args.devices:
            print(f"{devices:,} devices ...", flush=True)
            rows, stages = run(devices, -(-devices // args.per_worker), keys, bundles, args.staged_only)
            for label, result in rows:
                table.append((f"{devices:,} devices, {label}", result))
                print(f"  {label}: {result}", flush=True)
            per_stage += [(f"{devices:,} devices, {label}", count, seconds) for label, count, seconds in stages]
    print(f"\n{'rollout':<44}{'deploy call s':>14}{'devices switched s':>20}{'cloud sees all s':>18}")
    for label, result in table:
        print(f"{label:<44}{result['post']:>14.2f}{result['switched']:>20.2f}{result['seen']:>18.2f}")
    print(f"\n{'staged rollout, per stage':<52}{'devices switched':>18}{'stage s':>10}")
    for label, count, seconds in per_stage:
        print(f"{label:<52}{count:>18,}{seconds:>10.2f}")


if __name__ == "__main__":
    main()

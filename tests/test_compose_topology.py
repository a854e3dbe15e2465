"""deploy/compose.yaml (issue 17): its structure (every long-running service has a healthcheck, two cloud replicas
with their own ingest client ids, one share group and one bundles volume, the shipped Mosquitto configuration,
Prometheus on both replicas with the shipped rules, Grafana provisioned with the shipped dashboard), and, since
Docker is not available here, the same topology run natively (`make check-topology`): Mosquitto from
deploy/mosquitto as shipped, a fresh PostgreSQL database, a real `mlflow server`, two `edgeloop cloud` replicas and
/usr/bin/prometheus, each started with the command and settings the compose file gives it (tests/compose_topology.py
derives them), and each service's compose healthcheck run against it. Checks: both /readyz ok, one leader, a deploy
through replica 1 seen by replica 2, Prometheus' scrape targets up and sum(edgeloop_cloud_leader) == 1 in it.
Grafana is not installed here: its provisioning files are checked, not run."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml

from tests.cloud_support import postgres_url, wait_until
from tests.compose_topology import DEPLOY, ROOT, Service, dockerfile_entrypoint, load_compose
from tests.conftest import TrainedBundle
from tests.fault_helpers import wait_http
from tests.secure_broker import SecureBroker, start_secure_broker

BIN = Path(sys.executable).parent
VARIABLES = {"POSTGRES_PASSWORD": "unused-trust-auth", "MQTT_PASSWORD": "pw-topology-cloud",
             "EDGELOOP_OPERATOR_TOKEN": "topology-secret"}  # fmt: skip
CLOUDS = ("cloud-1", "cloud-2")
SERVICES = {"mosquitto", "postgres", "mlflow", *CLOUDS, "prometheus", "grafana"}
PROMETHEUS = Path("/usr/bin/prometheus")


def test_compose_file_structure() -> None:
    services = load_compose(VARIABLES)
    assert set(services) == SERVICES
    for service in services.values():  # what `docker compose ps` shows as (healthy), and a restart policy
        assert service.spec["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), service.name
        assert service.spec["restart"] == "unless-stopped", service.name
        for target, source in service.volume_sources().items():  # bind mounts name files that are shipped
            made_by_scripts = source.startswith(("./mosquitto/certs", "./keys"))  # make-certs.sh, edgeloop keygen
            if source.startswith("./") and not made_by_scripts:
                assert (DEPLOY / source).exists(), f"{service.name}: {source} -> {target} is not in deploy/"

    clouds = [services[name] for name in CLOUDS]
    assert all(
        c.spec["build"]["context"] == ".." and c.spec["build"]["dockerfile"] == "Dockerfile.cloud" for c in clouds
    )
    assert all("cloud" in c.spec["build"]["args"]["EXTRAS"].split(",") for c in clouds)
    assert (ROOT / "Dockerfile.cloud").exists()
    envs = [c.environment for c in clouds]
    assert envs[0]["EDGELOOP_CLOUD_INGEST_CLIENT_ID"] != envs[1]["EDGELOOP_CLOUD_INGEST_CLIENT_ID"]
    assert {e["EDGELOOP_CLOUD_INGEST_SHARE_GROUP"] for e in envs} == {"edgeloop-ingest"}
    assert all(e["EDGELOOP_CLOUD_STORE_URL"].startswith("postgresql+psycopg://") for e in envs)
    assert all("@postgres:5432/" in e["EDGELOOP_CLOUD_STORE_URL"] for e in envs)
    assert all(e["EDGELOOP_CLOUD_MQTT_URL"] == "mqtts://mosquitto:8883" for e in envs)
    assert {c.volume_sources()[e["EDGELOOP_CLOUD_BUNDLES_DIR"]] for c, e in zip(clouds, envs, strict=True)} == {
        "bundles"
    }
    assert all("/readyz" in " ".join(c.healthcheck) for c in clouds)
    assert all(set(c.spec["depends_on"]) == {"postgres", "mosquitto", "mlflow"} for c in clouds)

    broker = services["mosquitto"]
    assert broker.volume_sources()["/mosquitto/config"] == "./mosquitto"  # deploy/mosquitto as shipped
    assert "mosquitto -c mosquitto.conf" in broker.command[-1]
    assert "persistence_location /var/lib/mosquitto/" in (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert "/var/lib/mosquitto" in broker.volume_sources()
    assert services["mlflow"].environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert services["mlflow"].command[:2] == ["mlflow", "server"]

    prometheus = services["prometheus"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "edgeloop-cloud"
    assert job["static_configs"][0]["targets"] == [f"{name}:8700" for name in CLOUDS]
    (rules,) = config["rule_files"]
    assert prometheus.volume_sources()[rules] == "./prometheus-alerts.yml"

    grafana = services["grafana"]
    provisioning = DEPLOY / grafana.volume_sources()["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["isDefault"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "edgeloop.yml").read_text())["providers"]
    dashboards = provider["options"]["path"]
    assert grafana.volume_sources()[f"{dashboards}/edgeloop.json"] == "./grafana-dashboard.json"


def test_a_required_variable_left_unset_is_named() -> None:
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD is required"):
        load_compose({k: v for k, v in VARIABLES.items() if k != "POSTGRES_PASSWORD"})


@pytest.fixture()
def database() -> Iterator[tuple[str, str]]:
    """A fresh database on the local PostgreSQL: (user, name)."""
    user = sa.make_url(postgres_url()).username or "postgres"
    name = f"edgeloop_topology_{uuid.uuid4().hex[:8]}"
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", user, name], check=True, capture_output=True)
    yield user, name
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", user, "--force", name], capture_output=True)


def listen_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999): the servers here bind tens of seconds after the
    port is chosen (mlflow under load), and a port of that range can meanwhile become some process's outgoing
    connection's local port (seen twice on the shared machine: 'address already in use')."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def native_argv(argv: list[str]) -> list[str]:
    """A container's executable is this environment's (edgeloop, mlflow, python) or the machine's."""
    local = BIN / argv[0]
    return [str(local) if local.exists() else argv[0], *argv[1:]]


def healthy(service: Service, env: dict[str, str], cwd: Path | None = None) -> bool:
    """Run the service's compose healthcheck natively; healthy when it exits 0."""
    argv = native_argv(service.healthcheck)
    result = subprocess.run(argv, env={**os.environ, **env}, cwd=cwd, capture_output=True, timeout=15)
    return result.returncode == 0


class Topology:
    """The compose file's processes on this machine; stops them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        cwd.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELOOP_", "MLFLOW_"))}
        with (self.tmp_path / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(native_argv(argv), env={**base, **env}, cwd=cwd, stdout=log, stderr=log)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


def mounts(service: Service, named: dict[str, Path], broker: SecureBroker) -> list[tuple[str, str]]:
    """Container path -> native path, from the service's volumes: named volumes get a directory of the test,
    ./mosquitto/... is the broker's copy of deploy/mosquitto, other ./ paths are deploy/'s files."""
    pairs = []
    for target, source in service.volume_sources().items():
        if source.removeprefix("./") in named:  # a named volume, or ./keys (the signing keys of the test)
            native = named[source.removeprefix("./")]
        elif source.startswith("./mosquitto/"):
            native = broker.work / source.removeprefix("./mosquitto/")
        else:
            native = DEPLOY / source
        pairs.append((target, str(native)))
    return pairs


@pytest.mark.topology
def test_the_compose_topology_runs_natively(
    tmp_path: Path, database: tuple[str, str], request: pytest.FixtureRequest
) -> None:
    user, db = database
    topology = Topology(tmp_path)
    broker = start_secure_broker(tmp_path, [("edgeloop-cloud", "--cloud", VARIABLES["MQTT_PASSWORD"])], True)
    services = load_compose(VARIABLES)
    named = {name: tmp_path / "volumes" / name for name in ("bundles", "mlflow", "prometheus")}
    for path in named.values():
        path.mkdir(parents=True, exist_ok=True)
    ports = {"mlflow": listen_port()}
    try:
        # The broker: deploy/mosquitto/mosquitto.conf as shipped (tests/secure_broker.py adapts only its listener
        # and paths); its compose healthcheck (a TLS connection with the cloud's account) from its directory.
        mosquitto = services["mosquitto"]
        mosquitto.replacements = [("-p 8883", f"-p {broker.broker.port}")]
        assert healthy(mosquitto, mosquitto.environment, cwd=broker.work), "the broker's healthcheck failed"

        mlflow = services["mlflow"]
        mlflow.replacements = [("0.0.0.0", "127.0.0.1"), ("5000", str(ports["mlflow"])),
                               *mounts(mlflow, named, broker)]  # fmt: skip
        topology.start("mlflow", mlflow.command, mlflow.environment, tmp_path / "mlflow")
        # The session's signed bundle (its keys are the replicas' ./keys) is trained while mlflow server starts.
        rf_bundle: TrainedBundle = request.getfixturevalue("rf_bundle")
        named["keys"] = rf_bundle.keys_dir

        ports["cloud-1"] = listen_port()
        network = [
            ("mosquitto:8883", f"localhost:{broker.broker.port}"),
            (f"edgeloop:{VARIABLES['POSTGRES_PASSWORD']}@postgres:5432/edgeloop", f"{user}@127.0.0.1:5432/{db}"),
            ("mlflow:5000", f"127.0.0.1:{ports['mlflow']}"),
            ("localhost:8700", f"127.0.0.1:{ports['cloud-1']}"),  # the public URL: devices reach cloud-1
            ("0.0.0.0", "127.0.0.1"),
        ]
        entrypoint = dockerfile_entrypoint(ROOT / "Dockerfile.cloud")
        urls = {}
        for name in CLOUDS:
            cloud = services[name]
            ports[name] = ports.get(name) or listen_port()
            cloud.replacements = [*network, ("8700", str(ports[name])), *mounts(cloud, named, broker)]
            env = {**cloud.environment, "EDGELOOP_HOME": str(tmp_path / name / "home"), "EDGELOOP_LOG_LEVEL": "INFO"}
            urls[name] = f"http://127.0.0.1:{ports[name]}"
            process = topology.start(name, [*entrypoint, *cloud.command], env, tmp_path / name)
            wait_http(f"{urls[name]}/healthz", timeout=60, process=process)
        wait_http(f"http://127.0.0.1:{ports['mlflow']}/health", timeout=90)
        assert healthy(mlflow, {}), "mlflow's healthcheck failed"

        for name in CLOUDS:  # the compose healthcheck: /readyz answers 200 (store and broker reachable)
            wait_until(lambda name=name: healthy(services[name], {}), timeout=30, what=f"{name} ready")
            assert httpx.get(f"{urls[name]}/readyz").json()["status"] == "ready"
        wait_until(lambda: leader_values(urls) in ([1.0, 0.0], [0.0, 1.0]), timeout=15, what="one leader")

        # Prometheus with the compose command and the shipped config, its targets and rule file made native.
        # Departure: scrape and evaluation every 1 s instead of 15 s, so the test needs no 15 s wait.
        prometheus = services["prometheus"]
        ports["prometheus"] = listen_port()
        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(DEPLOY / "prometheus-alerts.yml")]
        for job in config["scrape_configs"]:
            for group in job["static_configs"]:
                group["targets"] = [f"127.0.0.1:{ports[target.split(':')[0]]}" for target in group["targets"]]
        native_config = tmp_path / "prometheus.yml"
        native_config.write_text(yaml.safe_dump(config))
        check = subprocess.run(["promtool", "check", "config", str(native_config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        prometheus.replacements = [*mounts(prometheus, named, broker), ("=:9090", f"=127.0.0.1:{ports['prometheus']}"),
                                   ("9090", str(ports["prometheus"])),
                                   ("/etc/prometheus/prometheus.yml", str(native_config))]  # fmt: skip
        if not PROMETHEUS.exists():
            pytest.fail("/usr/bin/prometheus is missing: install the Debian package prometheus (.ci/run does)")
        topology.start("prometheus", [str(PROMETHEUS), *prometheus.command], {}, tmp_path / "prometheus-run")
        wait_until(lambda: healthy(prometheus, {}), timeout=30, what="prometheus ready (its healthcheck)")

        # A deploy through replica 1 with the CLI, seen by replica 2 (its API and its bundle downloads).
        cli_env = {**os.environ, "EDGELOOP_HOME": str(tmp_path / "operator"), "EDGELOOP_CLOUD_TOKEN":
                   VARIABLES["EDGELOOP_OPERATOR_TOKEN"], "COLUMNS": "200", "NO_COLOR": "1"}  # fmt: skip
        deploy = subprocess.run(
            [str(BIN / "edgeloop"), "deploy", str(rf_bundle.bundle), "--group", "line-topology", "--canary", "0",
             "--cloud-url", urls["cloud-1"]],
            env=cli_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        status = subprocess.run(
            [str(BIN / "edgeloop"), "rollout", "status", "--group", "line-topology", "--cloud-url", urls["cloud-2"]],
            env=cli_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert status.returncode == 0 and "promoted" in status.stdout, status.stdout + status.stderr
        manifest = httpx.get(f"{urls['cloud-2']}/bundles/machine-failure/1/manifest.json")
        assert manifest.status_code == 200 and manifest.json()["version"] == 1

        # Prometheus scrapes both replicas: targets up, and the replicas' leader gauges add up to one.
        prom = f"http://127.0.0.1:{ports['prometheus']}"
        wait_until(lambda: targets_up(prom) == 2, timeout=30, what="both scrape targets up")
        wait_until(lambda: query(prom, "sum(edgeloop_cloud_leader)") == 1.0, timeout=15, what="one leader scraped")
        groups = httpx.get(f"{prom}/api/v1/rules").json()["data"]["groups"]
        assert {"EdgeloopCloudLeaderCount", "EdgeloopCloudIngestLag"} <= {r["name"] for g in groups for r in g["rules"]}
        print(f"topology: 2 replicas ready, leader values {leader_values(urls)}, prometheus targets up 2/2")
    finally:
        topology.stop()
        broker.stop()
        shutil.rmtree(named["prometheus"], ignore_errors=True)


def leader_values(urls: dict[str, str]) -> list[float | None]:
    values: list[float | None] = []
    for url in urls.values():
        try:
            lines = httpx.get(f"{url}/metrics", timeout=5).text.splitlines()
        except httpx.TransportError:
            values.append(None)
            continue
        values.append(next(float(x.split()[1]) for x in lines if x.startswith("edgeloop_cloud_leader ")))
    return values


def targets_up(prometheus: str) -> int:
    active = httpx.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
    return sum(1 for target in active if target["health"] == "up" and target["labels"]["job"] == "edgeloop-cloud")


def query(prometheus: str, expression: str) -> float | None:
    result = httpx.get(f"{prometheus}/api/v1/query", params={"query": expression}).json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None

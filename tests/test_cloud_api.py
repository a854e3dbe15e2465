"""The cloud API: viewer/operator tokens (401/403), bundle upload and download (ETag, ranges), 4xx messages."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_sync.api.app import create_app
from cloud_sync.api.context import CloudContext
from cloud_sync.ingest.publisher import MqttPublisher
from cloud_sync.rollouts.controller import Rollouts
from cloud_sync.store.bundles import BundleRegistry, bundle_tar
from contracts.manifest import sha256_file
from contracts.signing import load_public_key
from tests.cloud_support import make_store
from tests.conftest import Broker, TrainedBundle

VIEWER = {"Authorization": "Bearer look"}
OPERATOR = {"Authorization": "Bearer act"}


@pytest.fixture()
def client(broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle) -> Iterator[TestClient]:
    with make_store("sqlite", tmp_path) as store:
        registry = BundleRegistry(tmp_path / "bundles", load_public_key(rf_bundle.public_key))
        publisher = MqttPublisher(broker.url, client_id="api-test").start()
        rollouts = Rollouts(store, registry, publisher, base_url="http://127.0.0.1:9", keys_dir=rf_bundle.keys_dir)
        context = CloudContext(store, registry, rollouts, ["carol:look"], ["alice:act"])
        with TestClient(create_app(context)) as test_client:
            yield test_client
        publisher.stop()


def test_roles_and_authentication(client: TestClient, rf_bundle: TrainedBundle) -> None:
    assert client.get("/v1/devices").status_code == 401
    wrong = client.get("/v1/devices", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "unknown token"
    assert client.get("/v1/devices", headers=VIEWER).status_code == 200
    assert client.get("/v1/audit", headers=VIEWER).status_code == 200
    upload = client.put("/v1/bundles", headers=VIEWER, content=bundle_tar(rf_bundle.bundle))
    assert upload.status_code == 403 and "viewer token" in upload.json()["detail"]
    body = {"model_name": "machine-failure", "model_version": 1, "group": "line-1", "canary": "0"}
    assert client.post("/v1/rollouts", headers=VIEWER, json=body).status_code == 403
    assert client.post("/v1/alerts/1/acknowledge", headers=VIEWER).status_code == 403
    # The operator can do all of it; the audit log names them.
    upload = client.put("/v1/bundles", headers=OPERATOR, content=bundle_tar(rf_bundle.bundle))
    assert upload.status_code == 201 and upload.json()["version"] == 1
    deployed = client.post("/v1/rollouts", headers=OPERATOR, json=body)
    assert deployed.status_code == 201 and deployed.json()["state"] == "promoted"
    audit = client.get("/v1/audit", headers=VIEWER).json()
    assert [(row["actor"], row["action"]) for row in audit] == [("alice", "deploy"), ("alice", "promote")]
    csv = client.get("/v1/audit?format=csv", headers=VIEWER)
    assert csv.text.splitlines()[0] == "id,at,actor,action,target,reason,details"
    # Health, docs and device downloads need no token.
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "edgeloop cloud"


def test_bad_requests_name_the_problem(client: TestClient, rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    body = {"model_name": "machine-failure", "model_version": 0, "group": "line-1"}
    bad = client.post("/v1/rollouts", headers=OPERATOR, json=body)
    assert bad.status_code == 422 and bad.json()["detail"].startswith("model_version:")
    body["model_version"] = 7
    missing = client.post("/v1/rollouts", headers=OPERATOR, json=body)
    assert missing.status_code == 404 and "bundle machine-failure/7 is not on the bundle server" in missing.text
    body |= {"model_version": 1, "group": "bad/group"}
    client.put("/v1/bundles", headers=OPERATOR, content=bundle_tar(rf_bundle.bundle))
    assert client.post("/v1/rollouts", headers=OPERATOR, json=body).status_code == 422
    # A selector reaches the rollout: one that matches no device, or is malformed, is a 422 naming it.
    body["group"] = "line-1"
    nobody = client.post("/v1/rollouts", headers=OPERATOR, json=body | {"selector": "site=graz"})
    assert (
        nobody.status_code == 422
        and nobody.json()["detail"] == "--selector site=graz matches no device of group line-1"
    )
    malformed = client.post("/v1/rollouts", headers=OPERATOR, json=body | {"selector": "hw in ()"})
    assert malformed.status_code == 422 and "lists no value" in malformed.json()["detail"]
    assert client.get("/v1/devices?selector=hw%20in%20()", headers=VIEWER).status_code == 422
    assert client.get("/v1/fleet/stats?since=soon", headers=VIEWER).status_code == 422
    assert client.get("/v1/rollouts/r-nope", headers=VIEWER).status_code == 404
    # A tampered bundle is refused on upload.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in ("manifest.json", "manifest.sig"):
            archive.add(rf_bundle.bundle / name, arcname=name)
        data = (rf_bundle.bundle / "model.onnx").read_bytes()
        info = tarfile.TarInfo("model.onnx")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data[:-1] + bytes([data[-1] ^ 1])))
    tampered = client.put("/v1/bundles", headers=OPERATOR, content=buffer.getvalue())
    assert tampered.status_code == 422 and "does not match the manifest" in tampered.json()["detail"]
    assert client.put("/v1/bundles", headers=OPERATOR, content=b"not a tar").status_code == 422


def test_bundle_download_has_sha256_etag_and_ranges(client: TestClient, rf_bundle: TrainedBundle) -> None:
    client.put("/v1/bundles", headers=OPERATOR, content=bundle_tar(rf_bundle.bundle))
    model = rf_bundle.bundle / "model.onnx"
    full = client.get("/bundles/machine-failure/1/model.onnx")
    assert full.status_code == 200 and full.content == model.read_bytes()
    etag = full.headers["etag"]
    assert etag == f'"{sha256_file(model)}"'
    assert client.get("/bundles/machine-failure/1/model.onnx", headers={"If-None-Match": etag}).status_code == 304
    part = client.get("/bundles/machine-failure/1/model.onnx", headers={"Range": "bytes=100-"})
    assert part.status_code == 206 and part.content == model.read_bytes()[100:]
    assert part.headers["content-range"].startswith("bytes 100-")
    assert client.get("/bundles/machine-failure/1/secret.key").status_code == 404
    assert client.get("/bundles/machine-failure/9/model.onnx").status_code == 404


def test_a_version_number_cannot_be_reused_for_another_model(tmp_path, rf_bundle, logreg_bundle_v2) -> None:
    """Uploading v2 again is a no-op; uploading a different model under an existing name/version is a 409."""
    import shutil

    from cloud_sync.store.bundles import BundleRegistry
    from contracts.errors import ConflictError
    from contracts.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE
    from contracts.signing import load_public_key
    from tests.agent_helpers import manifest_of, resign

    registry = BundleRegistry(tmp_path / "bundles", load_public_key(rf_bundle.public_key))
    first = registry.add(logreg_bundle_v2.bundle)
    assert registry.add(logreg_bundle_v2.bundle).manifest == first.manifest  # idempotent
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    shutil.copyfile(rf_bundle.bundle / MODEL_FILE, impostor / MODEL_FILE)  # rf's model, numbered as v2
    manifest, signature = resign(manifest_of(rf_bundle.bundle), rf_bundle.keys_dir, version=2)
    (impostor / MANIFEST_FILE).write_bytes(manifest.to_json_bytes())
    (impostor / SIGNATURE_FILE).write_text(signature)
    with pytest.raises(ConflictError, match="already stored with another model"):
        registry.add(impostor)
    assert registry.add(logreg_bundle_v2.bundle).manifest == first.manifest

"""`edgeloop agent import BUNDLE_DIR_OR_TAR` into a running agent (real uvicorn, real bundles): a newer signed
bundle is installed and served; an older one is refused as a replay; a tampered one (its manifest edited after
signing) is refused by the signature check; a wrong token and no agent are one-line errors."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE
from tests.agent_helpers import AgentServer, record_of
from tests.cli_helpers import CliResult, assert_one_line_error, run_edgeloop
from tests.conftest import TrainedBundle, free_port

TOKEN = "import-token"


@pytest.fixture()
def agent(tmp_path: Path, rf_bundle: TrainedBundle) -> Iterator[AgentServer]:
    server = AgentServer(
        state_dir=tmp_path / "state", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key, token=TOKEN
    )
    yield server
    server.stop()


def _tar_gz(bundle: Path, target: Path) -> Path:
    with tarfile.open(target, "w:gz") as archive:
        for name in (MANIFEST_FILE, SIGNATURE_FILE, MODEL_FILE):
            archive.add(bundle / name, arcname=f"bundle/{name}")
    return target


def test_import_installs_a_newer_bundle_and_refuses_replays_and_tampering(
    agent: AgentServer,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = str(agent.settings.port)

    def imported(path: Path, token: str = TOKEN) -> CliResult:
        return run_edgeloop(["agent", "import", str(path), "--port", port, "--token", token], monkeypatch, capsys,
                            tmp_path / "home")  # fmt: skip

    assert agent.version() == 1
    done = imported(logreg_bundle_v2.bundle)
    assert done.exit_code == 0, done.stderr
    assert "imported machine-failure/2: deployed" in done.stdout
    agent.wait_version(2)
    answer = agent.predict(record_of(logreg_bundle_v2.bundle))
    assert answer.status_code == 200 and answer.json()["model_version"] == 2

    # The same bundle again: nothing to do. The older v1, as a .tar.gz: a replay, refused; v2 keeps serving.
    assert "machine-failure/2: unchanged" in imported(logreg_bundle_v2.bundle).stdout
    older = imported(_tar_gz(rf_bundle.bundle, tmp_path / "v1.tar.gz"))
    assert_one_line_error(older, 7, "refused", "machine-failure/1")
    assert agent.version() == 2

    # A tampered v3: v2's files with the version edited after signing -> the signature does not verify.
    tampered = tmp_path / "tampered"
    shutil.copytree(logreg_bundle_v2.bundle, tampered)
    manifest = json.loads((tampered / MANIFEST_FILE).read_text())
    (tampered / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": 3}))
    refused = imported(tampered)
    assert_one_line_error(refused, 4, "refused the bundle (HTTP 422)", "signature")
    assert agent.version() == 2

    assert_one_line_error(imported(tampered, token="wrong"), 2, "HTTP 401", "--token")
    nobody = run_edgeloop(["agent", "import", str(tampered), "--port", str(free_port())], monkeypatch, capsys,
                          tmp_path / "home")  # fmt: skip
    assert_one_line_error(nobody, 6, "no agent answers", "--port")
    assert_one_line_error(
        run_edgeloop(["agent", "import"], monkeypatch, capsys, tmp_path / "home"), 2, "give a bundle to import"
    )

"""Issue 8 commands as a user runs them: `edgeloop lineage` against a real agent, `edgeloop model-card` from
the real MLflow registry (Markdown and HTML), one-line errors."""

from __future__ import annotations

import html.parser
from pathlib import Path

import pytest

from tests.agent_helpers import AgentServer, free_port, record_of
from tests.cli_helpers import Cli, CliResult, assert_one_line_error, run_edgeloop
from tests.conftest import TrainedBundle


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Cli:
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> CliResult:
        return run_edgeloop(list(args), monkeypatch, capsys, tmp_path / "home")

    return run


def test_lineage_command_asks_the_agent(cli: Cli, rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    agent = AgentServer(
        state_dir=tmp_path / "agent",
        bundle=rf_bundle.bundle,
        public_key=rf_bundle.public_key,
        token="s3",
        device_id="gw-2",
    )
    try:
        pid = agent.predict(record_of(rf_bundle.bundle)).json()["prediction_id"]
        shown = cli("lineage", pid, "--agent-url", agent.url, "--token", "s3")
        assert shown.exit_code == 0, shown.stderr
        assert rf_bundle.run_id in shown.stdout and "gw-2" in shown.stdout
        assert "machine-failure v1" in shown.stdout and "code version" in shown.stdout
        raw = cli("lineage", pid, "--agent-url", agent.url, "--token", "s3", "--json")
        assert raw.exit_code == 0 and f'"run_id": "{rf_bundle.run_id}"' in raw.stdout
        assert_one_line_error(cli("lineage", "nope", "--agent-url", agent.url, "--token", "s3"), 3, "unknown here")
        assert_one_line_error(cli("lineage", pid, "--agent-url", agent.url), 2, "HTTP 401", "--token")
    finally:
        agent.stop()
    down = cli("lineage", pid, "--agent-url", f"http://127.0.0.1:{free_port()}")
    assert_one_line_error(down, 6, "unreachable")


class _Tables(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)


def test_model_card_export_markdown_and_html(cli: Cli, logreg_bundle_v2: TrainedBundle, tmp_path: Path) -> None:
    uri = logreg_bundle_v2.tracking_uri
    md = cli("model-card", "machine-failure/2", "--tracking-uri", uri)
    assert md.exit_code == 0, md.stderr
    assert md.stdout.startswith("# Model card: machine-failure")
    assert "version **2**" in md.stdout and logreg_bundle_v2.run_id in md.stdout
    assert "## Held-out metrics" in md.stdout and "| accuracy |" in md.stdout
    out = tmp_path / "card.html"
    done = cli("model-card", "machine-failure@champion", "--format", "html", "--out", str(out), "--tracking-uri", uri)
    assert done.exit_code == 0, done.stderr
    page = out.read_text()
    parser = _Tables()
    parser.feed(page)
    assert {"html", "h1", "h2", "table", "td"} <= set(parser.tags)
    assert "version <strong>1</strong>" in page and "@champion" in page
    assert_one_line_error(cli("model-card", "machine-failure/99", "--tracking-uri", uri), 3, "has no version 99")
    assert_one_line_error(cli("model-card", "machine-failure@champion", "--format", "pdf"), 2, "use md or html")


def test_deploy_finds_the_converted_bundle_of_any_registry_reference(logreg_bundle_v2: TrainedBundle) -> None:
    """`edgeloop deploy NAME@ALIAS|NAME@latest|NAME/VERSION` takes the bundle logged on that version's run
    (contracts.registry resolves references the same way for convert, score, deploy and model-card)."""
    from contracts.errors import InputError, NotFoundError
    from contracts.manifest import Manifest
    from edgeloop.cmd_cloud import _bundle_from_registry

    uri = logreg_bundle_v2.tracking_uri
    for reference, version in (("machine-failure@latest", 2), ("machine-failure/1", 1), ("machine-failure/2", 2)):
        path = _bundle_from_registry(reference, uri)
        assert Manifest.model_validate_json((path / "manifest.json").read_text()).version == version, reference
    with pytest.raises(NotFoundError, match="has no alias 'nope' \\(aliases: "):
        _bundle_from_registry("machine-failure@nope", uri)
    with pytest.raises(NotFoundError, match="registered model 'other' not found \\(known: machine-failure"):
        _bundle_from_registry("other@champion", uri)
    with pytest.raises(InputError, match="not a model reference"):
        _bundle_from_registry("machine failure", uri)

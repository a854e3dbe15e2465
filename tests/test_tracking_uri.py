"""Issue 13: one resolution of the MLflow tracking URI for every command, in this order: `--tracking-uri` >
EDGELOOP_TRACKING_URI > the config file's [train] table > MLFLOW_TRACKING_URI > SQLite in EDGELOOP_HOME.
The end-to-end proof against a real `mlflow server` is tests/test_registry_profile.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.tracking import resolve_tracking_uri
from converter.settings import ConvertSettings
from trainer.settings import TrainSettings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("EDGELOOP_TRACKING_URI", "MLFLOW_TRACKING_URI", "EDGELOOP_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EDGELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # no edgeloop.toml here unless a test writes one
    return monkeypatch


def _all(flag: str | None = None) -> set[str]:
    """What every reader resolves to: the commands without settings, the trainer and the converter."""
    train = TrainSettings(tracking_uri=flag) if flag else TrainSettings()
    convert = ConvertSettings(tracking_uri=flag) if flag else ConvertSettings()
    return {resolve_tracking_uri(flag), train.tracking_uri, convert.tracking_uri}


def test_precedence_flag_edgeloop_file_mlflow_default(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _all() == {f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"}
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert _all() == {"http://mlflow:5000"}
    (tmp_path / "edgeloop.toml").write_text('[train]\ntracking_uri = "http://from-file:5000"\n')
    assert resolve_tracking_uri() == TrainSettings().tracking_uri == "http://from-file:5000"
    (tmp_path / "edgeloop.toml").unlink()
    clean_env.setenv("EDGELOOP_TRACKING_URI", "http://edgeloop:5000")
    assert _all() == {"http://edgeloop:5000"}
    assert _all("http://flag:5000") == {"http://flag:5000"}


def test_empty_variables_count_as_unset(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("MLFLOW_TRACKING_URI", "")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"

"""Every command of the `edgeloop` CLI answers `--help` with an example, and the README's first screen only
names Makefile targets that exist."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer.main
from typer.testing import CliRunner

from edgeloop.cli import app
from tests.cli_helpers import run_edgeloop

ROOT = Path(__file__).resolve().parent.parent
FIRST_SCREEN_LINES = 40


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path of the app; groups have `.commands` (Typer vendors its own click, so no isinstance)."""
    yield path
    for name, child in sorted(getattr(command, "commands", {}).items()):
        if not child.hidden:
            yield from _command_paths(child, (*path, name))


COMMANDS = list(_command_paths(typer.main.get_command(app)))


def test_the_walk_finds_the_foundation_commands() -> None:
    names = {" ".join(path) for path in COMMANDS}
    assert {"", "train", "convert", "predict", "sample-data", "keys", "keys generate"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "edgeloop")
def test_help_has_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Example" in result.output, f"`edgeloop {' '.join(path)} --help` has no Example line"
    assert re.search(r"Example:?\s+edgeloop\b", result.output), result.output


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, flags=re.MULTILINE))


def test_readme_first_screen_commands_are_makefile_targets() -> None:
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:FIRST_SCREEN_LINES])
    named = re.findall(r"^\s*make\s+([\w-]+)", first_screen, flags=re.MULTILINE)
    assert {"demo", "test"} <= set(named), named
    missing = set(named) - _makefile_targets()
    assert not missing, f"README names make targets the Makefile lacks: {sorted(missing)}"
    # The Makefile's documented entry points from the issue are there too.
    assert {"setup", "train", "convert", "test", "lint", "bench", "demo"} <= _makefile_targets()


def test_keys_generate_writes_under_edgeloop_home(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`convert` signs with $EDGELOOP_HOME/keys, so that is where `keys generate` writes by default."""
    home = tmp_path / "home"
    monkeypatch.chdir(tmp_path)
    result = run_edgeloop(["keys", "generate"], monkeypatch, capsys, home)
    assert result.exit_code == 0, result.stderr
    assert (home / "keys" / "edgeloop-signing.key").is_file() and (home / "keys" / "edgeloop-signing.pub").is_file()
    assert not (tmp_path / ".edgeloop").exists()
    again = run_edgeloop(["keys", "generate"], monkeypatch, capsys, home)
    assert again.exit_code == 2 and again.errors and "--overwrite" in again.errors[0]


def test_sample_data_is_deterministic(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    digests = []
    for name in ("a.parquet", "b.parquet"):
        result = run_edgeloop(
            ["sample-data", "--out", str(tmp_path / name), "--rows", "50"], monkeypatch, capsys, tmp_path
        )
        assert result.exit_code == 0, result.stderr
        digests.append(pd.read_parquet(tmp_path / name))
    assert len(digests[0]) == 50 and digests[0].equals(digests[1])
    assert digests[0]["failure_24h"].nunique() == 2 and digests[0].isna().any().any()


def _params(path: tuple[str, ...]) -> list[Any]:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return list(command.params)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "edgeloop")
def test_bracketed_help_text_is_shown_not_eaten_as_markup(path: tuple[str, ...]) -> None:
    """Rich markup treats `[default: x]` as a tag and drops it unless escaped (`\\[`): every bracketed note
    written in an option's help must reach the screen."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    shown = " ".join(result.output.split())
    for param in _params(path):
        for note in re.findall(r"\\?\[(default: [^\]]*\]?)\]", getattr(param, "help", None) or ""):
            assert f"[{note}]" in shown, f"`edgeloop {' '.join(path)} --help` lost '[{note}]' of {param.name}"

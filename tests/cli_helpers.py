"""Run the `edgeloop` command line the way a user does: through `edgeloop.cli.main` (the entry point with
the one-line error handler) in-process, or through the installed `.venv/bin/edgeloop` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["EDGELOOP_BIN", "Cli", "CliResult", "assert_one_line_error", "run_edgeloop", "run_edgeloop_subprocess"]

EDGELOOP_BIN = Path(sys.executable).parent / "edgeloop"


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def errors(self) -> list[str]:
        """The `error: ...` lines on stderr (log lines are logfmt and start with `ts=`)."""
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


Cli = Callable[..., CliResult]
"""A test fixture that runs `edgeloop *args` and returns its CliResult."""


def run_edgeloop(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path
) -> CliResult:
    """Call `edgeloop.cli.main()` with `args`, EDGELOOP_HOME=`home`, and return what it printed."""
    from edgeloop.cli import main

    monkeypatch.setenv("EDGELOOP_HOME", str(home))
    monkeypatch.setenv("EDGELOOP_LOG_LEVEL", "WARNING")
    monkeypatch.delenv("EDGELOOP_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["edgeloop", *args])
    capsys.readouterr()
    started = time.perf_counter()
    with pytest.raises(SystemExit) as stopped:
        main()
    seconds = time.perf_counter() - started
    out, err = capsys.readouterr()
    code = stopped.value.code
    return CliResult(code if isinstance(code, int) else (0 if code is None else 1), out, err, seconds)


def run_edgeloop_subprocess(args: list[str], home: Path, cwd: Path, timeout: float = 120) -> CliResult:
    env = {key: value for key, value in os.environ.items() if key != "EDGELOOP_DEBUG"}
    env.update(EDGELOOP_HOME=str(home), EDGELOOP_LOG_LEVEL="WARNING", COLUMNS="120")
    started = time.perf_counter()
    done = subprocess.run(
        [str(EDGELOOP_BIN), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return CliResult(done.returncode, done.stdout, done.stderr, time.perf_counter() - started)


def assert_one_line_error(result: CliResult, exit_code: int, *fragments: str) -> str:
    """Non-zero exit, exactly one `error: ...` line containing every fragment, no traceback; returns the line."""
    assert result.exit_code == exit_code, (result.exit_code, result.stderr, result.stdout)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    assert len(result.errors) == 1, result.stderr
    line = result.errors[0]
    assert "unexpected" not in line, line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line

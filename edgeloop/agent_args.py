"""The edge agent's command-line options without Typer: the flags `edgeloop agent` and `python -m edge_agent`
accept, how they become `AgentSettings`, and the light parser that lets `python -m edge_agent` start serving
without importing Typer, Rich and Pygments (about 0.1 s and 7 MB of a device's start-up).

The light parser only takes a well-formed list of these flags (`--flag VALUE` or `--flag=VALUE`); anything else
(`--help`, an unknown flag, a missing or malformed value) goes to the Typer command, so help and usage errors
read exactly as in `edgeloop agent`. tests/test_agent_process.py checks that both accept the same flags.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contracts.errors import InputError
from edge_agent.settings import AgentSettings

__all__ = ["AGENT_OPTIONS", "agent_settings", "parse_agent_args", "serve"]

AGENT_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--bundle": ("bundle", Path),
    "--state-dir": ("state_dir", Path),
    "--port": ("port", int),
    "--host": ("host", str),
    "--token": ("token", str),
    "--device-id": ("device_id", str),
    "--group": ("group", str),
    "--mqtt-url": ("mqtt_url", str),
    "--public-key": ("public_key", Path),
    "--telemetry-interval": ("telemetry_interval_s", float),
}
"""flag -> (AgentSettings field, conversion), the options of `edgeloop agent` (edgeloop/cmd_agent.py)."""


def parse_agent_args(argv: Sequence[str]) -> dict[str, Any] | None:
    """The given flags as AgentSettings fields, or None when the Typer command must handle the arguments."""
    given: dict[str, Any] = {}
    args = iter(argv)
    for arg in args:
        flag, has_value, value = arg.partition("=")
        if flag not in AGENT_OPTIONS:
            return None
        if not has_value:
            value = next(args, "")
        if not value.strip() or value.startswith("-"):
            return None
        field, convert = AGENT_OPTIONS[flag]
        try:
            given[field] = convert(value)
        except ValueError:
            return None
    return given


def agent_settings(given: dict[str, Any]) -> AgentSettings:
    """Flags on top of EDGELOOP_AGENT_* variables and the config file; a bad value is a one-line InputError."""
    try:
        return AgentSettings(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InputError(f"agent setting {where}: {first['msg']}") from None


def serve(given: dict[str, Any]) -> None:
    """Build the settings, then run the agent until SIGTERM or SIGINT."""
    from contracts.logs import configure_logging
    from edge_agent.app import run_agent

    settings = agent_settings(given)
    configure_logging()
    run_agent(settings)

"""`edgeloop agent`: run the edge agent (also `python -m edge_agent`). Heavy imports happen in the command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from edge_agent.settings import AgentSettings
from edgeloop.agent_args import serve

__all__ = ["agent", "register", "settings_epilog", "typer_app"]


def settings_epilog() -> str:
    lines = [r"[bold]Settings[/bold] (env var = default; also the \[agent] table of edgeloop.toml or edgeloop.yaml):"]
    for env, default, doc in AgentSettings.describe():
        shown = f" = {default}" if default else ""
        lines.append(f"[cyan]{env}[/cyan]{escape(shown)}  {escape(doc)}")
    return "\n\n".join(lines)


def agent(
    bundle: Path | None = typer.Option(None, help="Bundle directory to install at start (verified first)."),
    state_dir: Path | None = typer.Option(None, help=r"Model store directory \[default: $EDGELOOP_HOME/agent]."),
    port: int | None = typer.Option(None, help=r"REST port \[default: 8080]."),
    host: str | None = typer.Option(None, help=r"Listen address \[default: 127.0.0.1]."),
    token: str | None = typer.Option(None, help="Bearer token for /v1/* (prefer EDGELOOP_AGENT_TOKEN)."),
    device_id: str | None = typer.Option(None, help=r"Device id in MQTT topics \[default: host name]."),
    group: str | None = typer.Option(None, help=r"Fleet group \[default: default]."),
    mqtt_url: str | None = typer.Option(None, help="mqtt://HOST:PORT or mqtts://HOST:PORT; unset = offline."),
    public_key: Path | None = typer.Option(None, help="Ed25519 public key that signs bundles."),
    telemetry_interval: float | None = typer.Option(
        None, help=r"Seconds per telemetry window published over MQTT \[default: 60]."
    ),
) -> None:
    """Serve a verified ONNX bundle over local REST and follow desired state over MQTT.

    Starts from the model store on disk with no network. --bundle installs a local bundle (never over a newer one).
    With --mqtt-url it applies signed desired states for its group or device and reports back.
    Settings come from flags, then EDGELOOP_AGENT_* variables, then the config file (listed below).

    Example: [cyan]edgeloop agent --bundle bundles/machine-failure --port 8080 --token s3cret[/cyan]
    """
    # The same flags as edgeloop/agent_args.py's AGENT_OPTIONS (the light path of `python -m edge_agent`).
    serve(
        {
            "bundle": bundle,
            "state_dir": state_dir,
            "port": port,
            "host": host,
            "token": token,
            "device_id": device_id,
            "group": group,
            "mqtt_url": mqtt_url,
            "public_key": public_key,
            "telemetry_interval_s": telemetry_interval,
        }
    )


def register(app: typer.Typer) -> None:
    app.command("agent", epilog=settings_epilog())(agent)


def typer_app(name: str) -> typer.Typer:
    """A Typer app whose only command is `agent` (`python -m edge_agent --help` and its usage errors)."""
    app = typer.Typer(name=name, pretty_exceptions_enable=False, rich_markup_mode="rich", add_completion=False)
    register(app)
    return app

"""`edgeloop agent`: run the edge agent (also `python -m edge_agent`). Heavy imports happen in the command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from contracts.errors import CheckFailed, InputError
from edge_agent.settings import AgentSettings
from edgeloop.agent_args import agent_settings, serve

__all__ = ["agent", "doctor", "import_bundle", "register", "settings_epilog", "typer_app"]


def settings_epilog() -> str:
    lines = [r"[bold]Settings[/bold] (env var = default; also the \[agent] table of edgeloop.toml or edgeloop.yaml):"]
    for env, default, doc in AgentSettings.describe():
        shown = f" = {default}" if default else ""
        lines.append(f"[cyan]{env}[/cyan]{escape(shown)}  {escape(doc)}")
    return "\n\n".join(lines)


def agent(
    action: str | None = typer.Argument(
        None,
        help="[bold]doctor[/bold]: check this device with these settings (ok / warn / fail lines) and exit. "
        "[bold]import[/bold] PATH: hand a bundle directory or tar to the agent running with these settings.",
    ),
    target: Path | None = typer.Argument(None, help="import: the bundle directory or .tar / .tar.gz file."),
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

    Preflight: [cyan]edgeloop agent doctor --mqtt-url mqtts://broker:8883 --public-key /etc/edgeloop/signing.pub[/cyan]

    From a USB stick: [cyan]edgeloop agent import /media/usb/machine-failure --port 8080 --token s3cret[/cyan]
    """
    # The same flags as edgeloop/agent_args.py's AGENT_OPTIONS (the light path of `python -m edge_agent`).
    if action not in (None, "doctor", "import"):
        raise InputError(
            f"unknown action {action!r}: `edgeloop agent` serves, `agent doctor` checks, `agent import PATH` installs"
        )
    if (action == "import") != (target is not None):
        raise InputError("give a bundle to import: `edgeloop agent import PATH` (PATH only with import)")
    run = doctor if action == "doctor" else serve
    if action == "import":
        assert target is not None

        def run(given: dict[str, Any]) -> None:
            import_bundle(given, target)

    run(
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


def doctor(given: dict[str, Any]) -> None:
    """Print one line per check of edge_agent/doctor.py; CheckFailed (exit 9) when any failed."""
    from edge_agent.doctor import run_checks

    console = Console(highlight=False, soft_wrap=True)  # one line per check, whatever the width
    colours = {"ok": "green", "warn": "yellow", "fail": "red"}
    checks = run_checks(agent_settings(given))
    for check in checks:
        fix = f"  [dim]-> {escape(check.fix)}[/dim]" if check.fix and check.status != "ok" else ""
        status = f"[{colours[check.status]}]{check.status:<4}[/{colours[check.status]}]"
        console.print(f"{status}  {check.name:<10}  {escape(check.detail)}{fix}")
    failed = [check.name for check in checks if check.status == "fail"]
    if failed:
        raise CheckFailed(f"{len(failed)} check(s) failed: {', '.join(failed)}; each line above says what to do")


def import_bundle(given: dict[str, Any], path: Path) -> None:
    """POST the bundle (a directory is tarred, a tar is sent as is) to the agent these settings describe."""
    import io
    import tarfile

    import httpx

    from contracts.errors import EdgeloopError, IntegrityError, ModelRejected, NotFoundError, ServiceUnavailableError
    from contracts.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE

    settings = agent_settings(given)
    if path.is_dir():
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for name in (MANIFEST_FILE, SIGNATURE_FILE, MODEL_FILE):
                if (path / name).is_file():
                    archive.add(path / name, arcname=name)
        body = buffer.getvalue()
    elif path.is_file():
        body = path.read_bytes()
    else:
        raise NotFoundError(f"{path} is neither a bundle directory nor a tar file")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}/v1/bundles"
    headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=300)
    except httpx.HTTPError as exc:
        raise ServiceUnavailableError(
            f"no agent answers at {url} ({exc}): start it (`edgeloop agent`), or give its --host / --port"
        ) from None
    if response.status_code != 200:
        try:
            problem = response.json()
        except ValueError:
            problem = {"detail": response.text.strip()[:200]}
        detail, kind = str(problem.get("detail")), str(problem.get("type", ""))
        error: type[EdgeloopError] = {409: ModelRejected, 503: ServiceUnavailableError}.get(
            response.status_code, IntegrityError if kind.endswith(":IntegrityError") else InputError
        )
        hint = " (give the agent's --token or EDGELOOP_AGENT_TOKEN)" if response.status_code == 401 else ""
        raise error(f"the agent refused the bundle (HTTP {response.status_code}): {detail}{hint}")
    answer = response.json()
    Console(highlight=False).print(
        f"imported {escape(answer['model'])}: {answer['status']} (agent at {host}:{settings.port})"
    )


def register(app: typer.Typer) -> None:
    app.command("agent", epilog=settings_epilog())(agent)


def typer_app(name: str) -> typer.Typer:
    """A Typer app whose only command is `agent` (`python -m edge_agent --help` and its usage errors)."""
    app = typer.Typer(name=name, pretty_exceptions_enable=False, rich_markup_mode="rich", add_completion=False)
    register(app)
    return app

"""`edgeloop demo`: train, convert, start a broker, the cloud and three agents, send traffic (one device
drifted), roll out a challenger to a canary, and point at the dashboard. The orchestration is in
`edgeloop.demo`; this module is the command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

__all__ = ["demo", "register"]

console = Console()


def demo(
    duration: float | None = typer.Option(
        None, min=1, help="Seconds to run once the fleet is up, then stop by itself [default: until Ctrl-C]."
    ),
    port: int = typer.Option(8700, min=1, max=65535, help="Port of the cloud API and dashboard."),
    workdir: Path | None = typer.Option(
        None, help=r"Where everything goes (wiped at each run) \[default: $EDGELOOP_HOME/demo]."
    ),
    mqtt_url: str | None = typer.Option(
        None, help="Use this broker instead of starting a private Mosquitto on a free port."
    ),
    telemetry_interval: float = typer.Option(5.0, min=1, help="Seconds per telemetry window on the agents."),
    soak: float = typer.Option(30.0, min=0, help="Minutes the canary soaks before the group follows."),
) -> None:
    """Run the whole loop on this machine: three agents, the cloud, drift, a canary rollout, the dashboard.

    Needs Mosquitto (apt-get install mosquitto) unless --mqtt-url names a broker. Ctrl-C stops everything.

    Example: [cyan]edgeloop demo --duration 120 --port 8700[/cyan]
    """
    import logging
    import os

    from contracts.settings import edgeloop_home
    from edgeloop.demo import Demo, DemoOptions

    if not os.environ.get("EDGELOOP_DEBUG"):  # the demo prints its own progress; agents log to files
        for name in ("edgeloop", "mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)

    options = DemoOptions(
        workdir=(workdir or edgeloop_home() / "demo").resolve(),
        port=port,
        duration=duration,
        mqtt_url=mqtt_url,
        telemetry_interval_s=telemetry_interval,
        soak_minutes=soak,
    )
    Demo(options, say=console.print).run()


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)

"""`edgeloop demo`: train, convert, start a broker, the cloud and three agents, send traffic (one device
drifted, with feedback), and follow the loop as it closes by itself: drift alert -> retrain -> shadow canary
-> promotion on measured accuracy; point at the dashboard. The orchestration is in `edgeloop.demo`; this
module is the command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

__all__ = ["demo", "register"]

console = Console()


def demo(
    duration: float | None = typer.Option(
        None,
        min=1,
        help="Seconds to run once the fleet is up, then stop by itself, but not before the loop has ended "
        "(closed, failed, or --loop-timeout) \\[default: until Ctrl-C].",
    ),
    port: int = typer.Option(8700, min=1, max=65535, help="Port of the cloud API and dashboard."),
    workdir: Path | None = typer.Option(
        None, help=r"Where everything goes (wiped at each run) \[default: $EDGELOOP_HOME/demo]."
    ),
    mqtt_url: str | None = typer.Option(
        None, help="Use this broker instead of starting a private Mosquitto on a free port."
    ),
    telemetry_interval: float = typer.Option(5.0, min=1, help="Seconds per telemetry window on the agents."),
    soak: float = typer.Option(
        0.25, min=0, help="Minutes the challenger soaks in shadow on the canary before the accuracies are compared."
    ),
    min_labels: int = typer.Option(400, min=1, help="Labels each model needs on the canary before the decision."),
    loop_timeout: float = typer.Option(
        600.0, min=10, help="With --duration: seconds after the fleet is up to wait at most for the loop to end."
    ),
) -> None:
    """Run the whole loop on this machine: three agents, the cloud, drift on gw-3, then by itself a drift alert,
    a retrain on the devices' feedback, the challenger in shadow on a canary, promotion on measured accuracy.

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
        min_labels=min_labels,
        loop_timeout_s=loop_timeout,
    )
    Demo(options, say=console.print).run()


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)

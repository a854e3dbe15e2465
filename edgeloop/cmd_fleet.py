"""`edgeloop devices`, `edgeloop alerts` and `edgeloop alerts ack ID`: operators' verbs over the cloud's REST API
(`GET /v1/devices`, `GET /v1/alerts`, `POST /v1/alerts/{id}/acknowledge`), with --cloud-url and --token or
EDGELOOP_CLOUD_URL / EDGELOOP_CLOUD_TOKEN like `edgeloop deploy`. A table for people, `--format json` for scripts.
"""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import urlencode

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from contracts.errors import InputError
from contracts.labels import format_labels
from edgeloop.cmd_cloud import call_cloud

__all__ = ["register"]

console = Console()
_URL = typer.Option("http://127.0.0.1:8700", envvar="EDGELOOP_CLOUD_URL", help="Base URL of `edgeloop cloud`.")
_TOKEN = typer.Option(None, envvar="EDGELOOP_CLOUD_TOKEN", help="Bearer token (viewer to read, operator to ack).")
_FORMAT = typer.Option("table", "--format", help="table or json.")
alerts_app = typer.Typer(
    help="List the cloud's alerts (drift, errors, offline devices, rollbacks ...) or acknowledge one.\n\n"
    "Example: [cyan]edgeloop alerts --firing[/cyan]",
    invoke_without_command=True,
    rich_markup_mode="rich",
)


def _check_format(value: str) -> str:
    if value not in ("table", "json"):
        raise InputError(f"--format {value!r}: use table or json")
    return value


def _print_json(rows: Any) -> None:
    sys.stdout.write(json.dumps(rows, indent=2) + "\n")


def _ago(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def devices(
    group: str | None = typer.Option(None, help="Only the devices of this group."),
    selector: str | None = typer.Option(
        None, help="Only the devices whose labels match (`site=graz,hw!=pi3`): what `deploy --selector` would reach."
    ),
    format: str = _FORMAT,
    cloud_url: str = _URL,
    token: str | None = _TOKEN,
) -> None:
    """List the devices the cloud knows: labels, online, last seen, clock offset, the model, its state and last error.

    Example: [cyan]edgeloop devices --group plant-a[/cyan]

    By label: [cyan]edgeloop devices --group plant-a --selector site=graz,hw=pi4[/cyan]

    For scripts: [cyan]edgeloop devices --format json | jq -r '.[] | select(.online | not) | .device_id'[/cyan]
    """
    _check_format(format)
    query = urlencode({key: value for key, value in (("group", group), ("selector", selector)) if value})
    rows = call_cloud("GET", cloud_url, "/v1/devices" + (f"?{query}" if query else ""), token)
    if format == "json":
        _print_json(rows)
        return
    table = Table("device", "group", "labels", "online", "last seen", "clock", "model", "state", "agent", "last error")
    for d in rows:
        model = f"{d['model_name']}/{d['model_version']}" if d.get("model_name") else "-"
        table.add_row(
            escape(d["device_id"]), escape(d.get("group") or "-"), escape(format_labels(d.get("labels") or {}) or "-"),
            "yes" if d["online"] else "no", _ago(d.get("last_seen_s_ago")), _clock(d.get("clock_offset_s")),
            escape(model), escape(d.get("state") or "-"),
            escape(d.get("agent_version") or "-"), escape(d.get("last_error") or ""),
        )  # fmt: skip
    console.print(table)
    online = sum(1 for d in rows if d["online"])
    console.print(f"{len(rows)} devices, {online} online" + (f" in group {escape(group)}" if group else ""))


def _clock(offset_s: float | None) -> str:
    """The cloud's measured offset of the device's clock: `ok` under a second, else `7.0 d slow` / `40 s fast`."""
    from cloud_sync.times import clock_offset_text

    return "-" if offset_s is None else "ok" if abs(offset_s) < 1 else clock_offset_text(offset_s)


@alerts_app.callback()
def alerts(
    context: typer.Context,
    firing: bool = typer.Option(False, "--firing", help="Only the alerts still firing."),
    format: str = _FORMAT,
    cloud_url: str = _URL,
    token: str | None = _TOKEN,
) -> None:
    """List the cloud's alerts: state, severity, rule, subject, message, when it fired, who acknowledged it.

    Example: [cyan]edgeloop alerts --firing[/cyan]

    Acknowledge one: [cyan]edgeloop alerts ack 12 --reason "on it"[/cyan]
    """
    if context.invoked_subcommand is not None:
        return
    _check_format(format)
    rows = call_cloud("GET", cloud_url, "/v1/alerts" + ("?state=firing" if firing else ""), token)
    if format == "json":
        _print_json(rows)
        return
    table = Table("id", "state", "severity", "rule", "subject", "message", "fired at", "acknowledged")
    for a in rows:
        acked = f"{a['acknowledged_by']} {a['acknowledged_at']}" if a.get("acknowledged_by") else ""
        table.add_row(
            str(a["id"]), a["state"], a["severity"], escape(a["rule"]), escape(a["subject"]), escape(a["message"]),
            a.get("fired_at") or "-", escape(acked),
        )  # fmt: skip
    console.print(table)
    console.print(f"{len(rows)} alerts" + (" firing" if firing else ""))


@alerts_app.command("ack")
def alerts_ack(
    alert_id: int = typer.Argument(..., min=1, help="The alert's id (first column of `edgeloop alerts`)."),
    reason: str | None = typer.Option(None, help="Why, or what is being done (kept in the audit log)."),
    cloud_url: str = _URL,
    token: str | None = _TOKEN,
) -> None:
    """Acknowledge an alert (operator token): it keeps firing until its rule clears, marked as seen and by whom.

    Example: [cyan]edgeloop alerts ack 12 --reason "bearing replaced on gw-3"[/cyan]
    """
    alert = call_cloud("POST", cloud_url, f"/v1/alerts/{alert_id}/acknowledge", token, json={"reason": reason})
    console.print(
        f"alert {alert['id']} ({escape(alert['rule'])} on {escape(alert['subject'])}, {alert['state']}) "
        f"acknowledged by {escape(alert['acknowledged_by'] or '?')} at {alert['acknowledged_at']}"
    )


def register(app: typer.Typer) -> None:
    app.command("devices")(devices)
    app.add_typer(alerts_app, name="alerts")

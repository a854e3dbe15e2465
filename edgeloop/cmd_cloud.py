"""`edgeloop cloud`, `edgeloop deploy`, `edgeloop rollout status|promote|rollback`, `edgeloop audit`.

`cloud` runs the service; the others are clients of its REST API (--cloud-url, --token or
EDGELOOP_CLOUD_URL / EDGELOOP_CLOUD_TOKEN), so they work from any machine that can reach it.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from contracts.errors import EdgeloopError, InputError, ModelRejected, NotFoundError, ServiceUnavailableError

__all__ = ["call_cloud", "register"]

console = Console()
rollout_app = typer.Typer(
    help="Follow, promote or roll back a staged rollout.\n\n"
    "Example: [cyan]edgeloop rollout status --group plant-a[/cyan]",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
_URL = typer.Option("http://127.0.0.1:8700", envvar="EDGELOOP_CLOUD_URL", help="Base URL of `edgeloop cloud`.")
_TOKEN = typer.Option(None, envvar="EDGELOOP_CLOUD_TOKEN", help="Bearer token (operator to act, viewer to read).")


def _settings_epilog() -> str:
    from cloud_sync.settings import CloudSettings

    lines = [r"[bold]Settings[/bold] (env var = default; also the \[cloud] table of edgeloop.toml or edgeloop.yaml):"]
    for env, default, doc in CloudSettings.describe():
        shown = f" = {default}" if default and "<function" not in default else ""
        lines.append(f"[cyan]{env}[/cyan]{escape(shown)}  {escape(' '.join(doc.split()))}")
    return "\n\n".join(lines)


cloud_app = typer.Typer(rich_markup_mode="rich", epilog=_settings_epilog())


@cloud_app.callback(invoke_without_command=True)
def cloud(
    ctx: typer.Context,
    port: int | None = typer.Option(None, help=r"API and bundle server port \[default: 8700]."),
    host: str | None = typer.Option(None, help=r"Listen address \[default: 127.0.0.1]."),
    mqtt_url: str | None = typer.Option(None, help=r"Broker \[default: mqtt://127.0.0.1:1883]."),
    store_url: str | None = typer.Option(
        None, help=r"sqlite:///... or postgresql://... \[default: $EDGELOOP_HOME/cloud.db]."
    ),
    bundles_dir: Path | None = typer.Option(
        None, help=r"Bundles served to devices \[default: $EDGELOOP_HOME/bundles]."
    ),
) -> None:
    """Run the cloud side: bundle server, REST API, telemetry ingest, staged rollouts, alerts and audit log.

    It migrates the store to the newest schema revision first (Alembic; `edgeloop cloud migrate` does only that).

    Example: [cyan]edgeloop cloud --port 8700 --mqtt-url mqtt://127.0.0.1:1883[/cyan]
    """
    if ctx.invoked_subcommand is not None:
        return
    from cloud_sync.service import CloudService

    given: dict[str, Any] = {"port": port, "host": host, "mqtt_url": mqtt_url, "store_url": store_url}
    given["bundles_dir"] = bundles_dir
    CloudService(_cloud_settings(given)).run()


def _cloud_settings(given: dict[str, Any]) -> Any:
    """CloudSettings from the flags given (None = not given) over env and config file; a bad one in one line."""
    from pydantic import ValidationError

    from cloud_sync.settings import CloudSettings

    try:
        return CloudSettings(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(f"cloud setting {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


@cloud_app.command("migrate")
def migrate(
    store_url: str | None = typer.Option(
        None, help=r"sqlite:///... or postgresql://... \[default: the cloud's store_url setting]."
    ),
    sql: bool = typer.Option(
        False, "--sql", help="Print the SQL of the revisions instead of running them (nothing is connected to)."
    ),
    from_revision: str | None = typer.Option(
        None, "--from", help=r"With --sql: the revision the store is at \[default: none, an empty store]."
    ),
) -> None:
    """Bring the cloud's store to the newest schema revision (Alembic), as `edgeloop cloud` does on start.

    A store made before Alembic is brought up to the baseline first. Of replicas starting at once, one migrates.

    Example: [cyan]edgeloop cloud migrate --store-url postgresql://edgeloop@db/edgeloop[/cyan]

    For a DBA: [cyan]edgeloop cloud migrate --sql --store-url postgresql://db/edgeloop > upgrade.sql[/cyan]
    """
    from cloud_sync.store import migrate as migrations
    from cloud_sync.store.db import Store

    settings = _cloud_settings({"store_url": store_url})
    if sql:
        print(migrations.offline_sql(settings.store_url, from_revision), end="")
        return
    if from_revision is not None:
        raise InputError("--from goes with --sql (a connected store says its own revision)")
    store = Store(settings.store_url, schema=settings.store_schema)
    try:
        before = store.create().revision_before
    finally:
        store.dispose()
    if before == migrations.HEAD:
        console.print(f"store {store.safe_url} is at the newest revision {migrations.HEAD}: nothing to do")
    else:
        console.print(f"store {store.safe_url} migrated: revision {before or 'none'} -> {migrations.HEAD}")


# -- API client -------------------------------------------------------------------------------------
def call_cloud(method: str, url: str, path: str, token: str | None, **kwargs: Any) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, url.rstrip("/") + path, headers=headers, timeout=60, **kwargs)
    except httpx.HTTPError as exc:
        raise ServiceUnavailableError(
            f"cloud at {url} is unreachable ({exc}); start it with `edgeloop cloud`"
        ) from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text.strip()[:200]
        error: type[EdgeloopError] = {404: NotFoundError, 409: ModelRejected, 503: ServiceUnavailableError}.get(
            response.status_code, InputError
        )
        hint = " (pass --token or set EDGELOOP_CLOUD_TOKEN)" if response.status_code in (401, 403) else ""
        raise error(f"cloud answered HTTP {response.status_code}: {detail}{hint}")
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.text


def _bundle_from_registry(reference: str, tracking_uri: str | None) -> Path:
    """The converted bundle logged on the registry version's run (artifact path edgeloop/bundle)."""
    import tempfile

    from contracts.tracking import ensure_tracking_reachable, resolve_tracking_uri, safe_uri

    uri = resolve_tracking_uri(tracking_uri)
    ensure_tracking_reachable(uri)
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from contracts.registry import find_model_version, parse_reference

    parsed = parse_reference(reference)
    name = str(parsed.name)
    client = MlflowClient(tracking_uri=uri)
    try:
        version = find_model_version(client, parsed)
    except MlflowException as exc:
        where = safe_uri(uri)
        raise NotFoundError(f"{reference} is not in the registry at {where}: {str(exc).splitlines()[0]}") from None
    target = Path(tempfile.mkdtemp(prefix="edgeloop-deploy-"))
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path="edgeloop/bundle", dst_path=str(target), tracking_uri=uri
        )
    except (MlflowException, OSError):
        raise NotFoundError(
            f"{name} version {version.version} has no converted bundle yet; run "
            f"`edgeloop convert {reference} --out bundles/{name}` first, then deploy again"
        ) from None
    return Path(local)


def deploy(
    reference: str = typer.Argument(..., help="NAME@ALIAS or NAME/VERSION from the registry, or a bundle directory."),
    group: str = typer.Option(..., help="Device group to roll out to."),
    canary: str | None = typer.Option(
        None, help=r"Canary: a share of the group (`25%`) or devices (`dev-1,dev-2`); 0 = none \[default: 10%]."
    ),
    soak: float = typer.Option(
        10.0, min=0, help="Minutes the canary (each stage) must stay healthy before the group (next stage) follows."
    ),
    stages: str | None = typer.Option(
        None,
        "--stages",
        help="Staged rollout instead of --canary: cumulative shares of the group, e.g. 1%,10%,50%,100%; each stage "
        "confirms, soaks and passes the canary checks, then widens; a failed check rolls every switched device back.",
    ),
    max_per_minute: int | None = typer.Option(
        None, "--max-per-minute", min=1, help="With --stages: at most this many devices switched per minute."
    ),
    abort_failed_pct: float | None = typer.Option(
        None,
        "--abort-failed-pct",
        min=0,
        max=99.999,
        help="With --stages: roll back when more than this % of the switched devices rejected the version or did "
        "not confirm it within --confirm-timeout (once --abort-min-devices were switched).",
    ),
    abort_min_devices: int = typer.Option(1, "--abort-min-devices", min=1, help="The abort rule counts from here."),
    confirm_timeout: float | None = typer.Option(
        None,
        "--confirm-timeout",
        min=0.001,
        help=r"With --stages: seconds a switched device has to confirm \[default: the cloud's "
        "rollout_confirm_timeout_s].",
    ),
    shadow: bool = typer.Option(
        False,
        "--shadow",
        help="Shadow canary: the canary keeps serving the group's version with this one in shadow; promoted after "
        "the soak if its measured accuracy is at least the champion's, else rolled back.",
    ),
    ab_fraction: float | None = typer.Option(
        None,
        "--ab-fraction",
        min=0,
        max=1,
        help="A/B test: on the canary this version answers this share of the request keys (stable hash of the "
        "key) beside the group's version; `rollout status` shows per-arm accuracy; promote or roll back by hand.",
    ),
    ab_key: str | None = typer.Option(
        None,
        "--ab-key",
        help=r"A/B test: the record field that is the request key (e.g. machine_id) \[default: the X-Request-Key "
        "header only; requests without a key go to the group's version].",
    ),
    selector: str | None = typer.Option(
        None,
        "--selector",
        help="Only the group's devices whose labels match (agent setting `labels`): `site=graz,hw=pi4`, `hw!=pi3`, "
        "`hw in (pi4,pi5)`, `gpu`, `!gpu`; the promotion reaches exactly them (device-level desired states).",
    ),
    canary_per_label: str | None = typer.Option(
        None,
        "--canary-per-label",
        help="A label key (e.g. hw): the canary gets at least one device of each of its values.",
    ),
    cloud_url: str = _URL,
    token: str | None = _TOKEN,
    tracking_uri: str | None = typer.Option(
        None,
        help=r"MLflow tracking URI \[default: $EDGELOOP_TRACKING_URI, "
        r"$MLFLOW_TRACKING_URI, else sqlite in $EDGELOOP_HOME].",
    ),
) -> None:
    """Upload a signed bundle to the cloud and start a staged rollout: canary first, then the group.

    The rollout watches the canary's events and telemetry during the soak and rolls back automatically.

    Example: [cyan]edgeloop deploy machine-failure@champion --group line-1 --canary 25% --soak 10[/cyan]

    A/B on gw-1: [cyan]edgeloop deploy m/3 --group line-1 --canary gw-1 --ab-fraction 0.2 --ab-key machine_id[/cyan]

    By label: [cyan]edgeloop deploy m/3 --group line-1 --selector site=graz,hw!=pi3 --canary-per-label hw[/cyan]

    In stages: [cyan]edgeloop deploy m/3 --group line-1 --stages 1%,10%,50%,100% --soak 10 --max-per-minute 500
    --abort-failed-pct 5 --abort-min-devices 20[/cyan]
    """
    from cloud_sync.rollouts.selectors import Selector
    from cloud_sync.rollouts.stages import parse_stages
    from cloud_sync.store.bundles import bundle_tar

    shares = parse_stages(stages) if stages is not None else ()
    paced = max_per_minute is not None or abort_failed_pct is not None or confirm_timeout is not None
    if paced and not shares:
        raise InputError("--max-per-minute and the abort rule need --stages (e.g. --stages 10%,100%)")
    if shares and canary is not None:
        raise InputError("--stages replaces --canary (the first stage is the canary): give one of them")

    if selector is not None:
        selector = str(Selector.parse(selector))  # a bad selector fails before the upload

    if ab_key is not None and ab_fraction is None:
        raise InputError("--ab-key needs --ab-fraction (the challenger's share of the request keys)")
    if shadow and ab_fraction is not None:
        raise InputError("--shadow and --ab-fraction are two different modes: choose one")

    path = Path(reference)
    if path.is_dir():
        bundle = path
    elif "@" in reference or "/" in reference:
        bundle = _bundle_from_registry(reference, tracking_uri)
    else:
        raise InputError(f"{reference!r} is neither a bundle directory nor NAME@ALIAS / NAME/VERSION")
    info = call_cloud("PUT", cloud_url, "/v1/bundles", token, content=bundle_tar(bundle))
    body = {
        "model_name": info["name"],
        "model_version": info["version"],
        "group": group,
        "soak_minutes": soak,
        "mode": "shadow" if shadow else "ab" if ab_fraction is not None else "serving",
    }
    if ab_fraction is not None:
        body |= {"ab_fraction": ab_fraction, "ab_key": ab_key}
    body |= {key: value for key, value in (("selector", selector), ("canary_per_label", canary_per_label)) if value}
    if canary is not None:
        body["canary"] = canary
    if shares:
        body |= {"stages": list(shares), "abort_min_devices": abort_min_devices}
        body |= {"max_per_minute": max_per_minute, "abort_failed_pct": abort_failed_pct}
        body |= {"confirm_timeout_s": confirm_timeout}
    rollout = call_cloud("POST", cloud_url, "/v1/rollouts", token, json=body)
    _print_rollout(rollout)


def _stage_line(stage: dict[str, Any]) -> str:
    """`stage 2/4 (10%): +9 devices, 10 of 100 switched, 10 confirmed; checks: passing`."""
    line = (
        f"stage [bold]{stage['stage']}/{stage['of']}[/bold] ({stage['percent']:g}%): +{len(stage['devices'])} "
        f"devices, {stage['switched']} of {stage['planned']} switched"
    )
    if stage.get("confirmed") is not None:
        line += f", {stage['confirmed']} confirmed, {stage['waiting']} waiting"
        failed = [*(stage.get("rejected") or []), *(stage.get("late") or [])]
        line += f", {len(failed)} rejected or late" if failed else ""
    if stage.get("max_per_minute"):
        line += f", at most {stage['max_per_minute']}/min"
    return line + f"; checks: {escape(stage['checks'] or '-')}"


def _print_rollout(rollout: dict[str, Any]) -> None:
    console.print(
        f"rollout [bold]{rollout['id']}[/bold]: {rollout['model']} -> group {rollout['group']} "
        f"(previous version {rollout['previous_version']}), state [bold]{rollout['state']}[/bold]"
        + (f", devices matching {escape(rollout['selector'])}" if rollout.get("selector") else "")
    )
    if rollout.get("reason"):
        console.print(f"reason: {escape(rollout['reason'])}")
    if stage := rollout.get("stage"):
        console.print(_stage_line(stage))
    table = Table("device", "canary", "online", "version", "on target", "state", "last error")
    for d in rollout.get("devices", []):
        table.add_row(
            d["device_id"],
            "yes" if d["canary"] else "",
            "yes" if d["online"] else "no",
            str(d["model_version"]),
            "yes" if d["on_target"] else "no",
            str(d["state"]),
            escape(d["last_error"] or ""),
        )
    console.print(table)
    if rollout.get("ab"):
        arms = Table(
            "arm", "version", "requests", "failed", "records", "share", "labels", "accuracy", title="A/B on the canary"
        )
        for arm in ("champion", "challenger"):
            part = rollout["ab"][arm]
            share, accuracy = part.get("share"), part.get("accuracy")
            arms.add_row(
                arm,
                str(part["model_version"]),
                str(part.get("requests", "-")),
                str(part.get("errors", "-")),
                str(part["records"]),
                "-" if share is None else f"{share:.1%}",
                str(part["labels"]),
                "-" if accuracy is None else f"{accuracy:.3f}",
            )
        console.print(arms)
        decision = rollout["ab"].get("decision")
        if decision:
            acts = "the controller acts on it" if decision["auto_decide"] else "promote or roll back by hand"
            console.print(f"A/B decision: [bold]{escape(decision['summary'])}[/bold] ({acts})")


def _rollout_path(rollout_id: str | None, group: str | None) -> str:
    if rollout_id:
        return f"/v1/rollouts/{rollout_id}"
    return "/v1/rollouts/latest" + (f"?group={group}" if group else "")


@rollout_app.command("status")
def rollout_status(
    rollout_id: str | None = typer.Argument(None, help="Rollout id \\[default: the latest]."),
    group: str | None = typer.Option(None, help="Latest rollout of this group."),
    wait: bool = typer.Option(
        False,
        "--wait",
        help="Follow the rollout until it ends: exit 0 when promoted, 10 when rolled back, 11 when failed, "
        "12 when --timeout runs out first (for CI).",
    ),
    timeout: float = typer.Option(3600.0, min=0, help="With --wait: give up after this many seconds."),
    interval: float = typer.Option(5.0, min=0.05, help="With --wait: seconds between two polls."),
    cloud_url: str = _URL,
    token: str | None = _TOKEN,
) -> None:
    """Show a rollout's state, reason and per-device progress; with --wait, follow it until it ends.

    Example: [cyan]edgeloop rollout status --group line-1[/cyan]

    In CI: [cyan]edgeloop rollout status --group line-1 --wait --timeout 3600[/cyan]
    """
    current = call_cloud("GET", cloud_url, _rollout_path(rollout_id, group), token)
    if wait:
        from edgeloop.rollout_wait import wait_for_rollout

        path = f"/v1/rollouts/{current['id']}?devices=false"  # counts only: light for a group of thousands
        try:
            wait_for_rollout(
                lambda: call_cloud("GET", cloud_url, path, token),
                timeout_s=timeout,
                interval_s=interval,
                report=lambda line: console.print(escape(line), highlight=False),
            )
        finally:
            _print_final(cloud_url, str(current["id"]), token)
        return
    _print_rollout(current)


def _print_final(cloud_url: str, rollout_id: str, token: str | None) -> None:
    """The full status once the wait is over; a cloud gone by then must not hide why the wait ended."""
    with contextlib.suppress(EdgeloopError):
        _print_rollout(call_cloud("GET", cloud_url, f"/v1/rollouts/{rollout_id}", token))


@rollout_app.command("promote")
def rollout_promote(
    rollout_id: str | None = typer.Argument(None, help="Rollout id \\[default: the latest]."),
    group: str | None = typer.Option(None, help="Latest rollout of this group."),
    reason: str | None = typer.Option(None, help="Why (kept in the audit log)."),
    cloud_url: str = _URL,
    token: str | None = _TOKEN,
) -> None:
    """Promote the canary's version to the whole group now, without waiting for the soak.

    Example: [cyan]edgeloop rollout promote --group line-1 --reason "verified on the line"[/cyan]
    """
    current = call_cloud("GET", cloud_url, _rollout_path(rollout_id, group), token)
    _print_rollout(
        call_cloud("POST", cloud_url, f"/v1/rollouts/{current['id']}/promote", token, json={"reason": reason})
    )


@rollout_app.command("rollback")
def rollout_rollback(
    rollout_id: str | None = typer.Argument(None, help="Rollout id \\[default: the latest]."),
    group: str | None = typer.Option(None, help="Latest rollout of this group."),
    reason: str | None = typer.Option(None, help="Why (kept in the audit log)."),
    cloud_url: str = _URL,
    token: str | None = _TOKEN,
) -> None:
    """Roll back to the previous version (signed rollback manifest), during the canary or after promotion.

    Example: [cyan]edgeloop rollout rollback --group line-1 --reason "false alarms on line 1"[/cyan]
    """
    current = call_cloud("GET", cloud_url, _rollout_path(rollout_id, group), token)
    _print_rollout(
        call_cloud("POST", cloud_url, f"/v1/rollouts/{current['id']}/rollback", token, json={"reason": reason})
    )


def audit(
    format: str = typer.Option("table", "--format", help="table, jsonl or csv."),
    out: Path | None = typer.Option(None, help="Write to this file instead of the terminal."),
    action: str | None = typer.Option(None, help="Only this action (deploy, promote, rollback, ...)."),
    cloud_url: str = _URL,
    token: str | None = _TOKEN,
) -> None:
    """Print or export the append-only audit log: who did what, when and why.

    Example: [cyan]edgeloop audit --format csv --out audit.csv[/cyan]
    """
    if format not in ("table", "jsonl", "csv"):
        raise InputError(f"--format {format!r}: use table, jsonl or csv")
    query = f"?format={'json' if format == 'table' else format}" + (f"&action={action}" if action else "")
    result = call_cloud("GET", cloud_url, f"/v1/audit{query}", token)
    if format == "table":
        table = Table("at", "actor", "action", "target", "reason")
        for row in result:
            table.add_row(row["at"], row["actor"], row["action"], escape(row["target"]), escape(row["reason"] or ""))
        text = None
    else:
        text = result
    if out is not None:
        if text is None:
            from cloud_sync.store.audit import export

            text = export(result, "jsonl")
        out.write_text(text)
        console.print(f"wrote {out}")
    elif text is None:
        console.print(table)
    else:
        sys.stdout.write(text)


def register(app: typer.Typer) -> None:
    app.add_typer(cloud_app, name="cloud")
    app.command("deploy")(deploy)
    app.add_typer(rollout_app, name="rollout")
    app.command("audit")(audit)

"""Closing the loop (issue 8): `edgeloop lineage`, `edgeloop model-card`, `edgeloop explain`, `edgeloop retrain`,
`edgeloop impact`.

`lineage` asks an agent's REST API (--agent-url, --token) where a prediction came from; `model-card` exports
the card the trainer logged for a registry version as Markdown or HTML; `explain` explains a bundle's predictions
on records from a JSON file (edge_agent/explain.py, numpy only, as POST /v1/explain); `retrain` runs a model's
retraining policy by hand (the trainer runs as a separate `edgeloop train` process); `impact` asks the cloud for the
estimated business value per version from the feedback confusion counts.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from contracts.errors import EdgeloopError, InputError, NotFoundError, ServiceUnavailableError

__all__ = ["card_html", "register"]

console = Console()
_AGENT_URL = typer.Option("http://127.0.0.1:8080", envvar="EDGELOOP_AGENT_URL", help="Base URL of the agent.")
_AGENT_TOKEN = typer.Option(None, envvar="EDGELOOP_AGENT_TOKEN", help="The agent's bearer token.")
_TRACKING = typer.Option(
    None,
    help=r"MLflow tracking URI \[default: $EDGELOOP_TRACKING_URI, "
    r"$MLFLOW_TRACKING_URI, else sqlite in $EDGELOOP_HOME].",
)


def _get(url: str, path: str, token: str | None, what: str) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url.rstrip("/") + path, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise ServiceUnavailableError(f"{what} at {url} is unreachable ({exc})") from None
    if response.status_code >= 400:
        try:
            body = response.json()
            detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
        except ValueError:
            detail = response.text.strip()[:200]
        error: type[EdgeloopError] = NotFoundError if response.status_code == 404 else InputError
        if response.status_code == 503:
            error = ServiceUnavailableError
        hint = " (pass --token)" if response.status_code in (401, 403) else ""
        raise error(f"{what} answered HTTP {response.status_code}: {detail}{hint}")
    return response.json()


def lineage(
    prediction_id: str = typer.Argument(..., help="The prediction_id a /v1/predict answer carried."),
    agent_url: str = _AGENT_URL,
    token: str | None = _AGENT_TOKEN,
    json_out: bool = typer.Option(False, "--json", help="Print the raw JSON answer."),
) -> None:
    """Trace a device's prediction back to the model version, MLflow run, training data hash and code version.

    Example: [cyan]edgeloop lineage 3f2a9c... --agent-url http://gw-1:8080 --token s3cret[/cyan]
    """
    import orjson

    found = _get(agent_url, f"/v1/predictions/{prediction_id}/lineage", token, "the agent")
    if json_out:
        console.print_json(orjson.dumps(found).decode())
        return
    model, origin = found["model"], found["lineage"]
    table = Table("field", "value", show_header=False)
    rows = [
        ("prediction", found["prediction_id"]),
        ("device / group", f"{found.get('device_id')} / {found.get('group')}"),
        ("made at", found["made_at"]),
        ("answer", f"{found['answer']} (answered by {found['answered_by']})"),
        ("cloud model", found.get("cloud_model") or ""),
        ("true label", "" if found.get("actual") is None else str(found["actual"])),
        ("model", f"{model['name']} v{model['version']} (bundle {model['bundle']})"),
        ("onnx sha256", model["onnx_sha256"]),
        ("run id", origin["run_id"]),
        ("registered", f"{origin.get('registered_model')} / {origin.get('model_version')}"),
        ("data", f"{origin['data_source']} sha256 {origin['data_hash']} ({origin['data_rows']} rows)"),
        ("code version", origin["code_version"]),
        ("estimator", origin["estimator"]),
        ("held-out metrics", "  ".join(f"{k}={v:.3f}" for k, v in origin["metrics"].items())),
    ]
    if found.get("shadow"):
        shadow = found["shadow"]
        rows.append(("shadow", f"{shadow['model']} said {shadow['label']} (run {shadow['run_id']})"))
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    console.print(table)


def card_html(markdown: str, title: str) -> str:
    """A model card (Markdown) as a standalone HTML page (markdown-it, which Rich already depends on)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .6rem}code{background:#f3f3f3}"
    )
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head>\n<body>\n{body}</body></html>\n"
    )


def model_card_markdown(reference: str, tracking_uri: str | None) -> tuple[str, str]:
    """(markdown, title): the trainer's card of a registry version, headed with the version's registry facts."""
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
    with tempfile.TemporaryDirectory(prefix="edgeloop-card-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path="edgeloop/model_card.md", dst_path=tmp, tracking_uri=uri
            )
        except (MlflowException, OSError):
            raise NotFoundError(f"{name} version {version.version} has no model card in its run") from None
        card = Path(path).read_text()
    aliases = ", ".join(f"@{a}" for a in version.aliases) or "none"
    tags = version.tags or {}
    facts = [
        f"- Registered model `{name}` version **{version.version}** (aliases: {aliases})",
        f"- Run `{version.run_id}`",
    ]
    if tags.get("edgeloop.bundle_sha256"):
        facts.append(f"- Signed bundle: manifest sha256 `{tags['edgeloop.bundle_sha256']}`")
    if tags.get("edgeloop.retrain_feedback_sha256"):
        facts.append(f"- Retrained with device feedback: sha256 `{tags['edgeloop.retrain_feedback_sha256']}`")
    if tags.get("edgeloop.retrain_mixture"):
        from edgeloop.retrain_mixture import Mixture

        facts.append(f"- Training mixture: {Mixture.from_json(tags['edgeloop.retrain_mixture']).describe()}")
    header = "\n".join(facts)
    title, _, rest = card.partition("\n")
    return f"{title}\n\n{header}\n{rest}", f"Model card: {name} v{version.version}"


def model_card(
    reference: str = typer.Argument(..., help="NAME@ALIAS or NAME/VERSION in the MLflow registry."),
    format: str = typer.Option("md", "--format", help="md or html."),
    out: Path | None = typer.Option(None, help="Write to this file \\[default: print]."),
    tracking_uri: str | None = _TRACKING,
) -> None:
    """Export the model card of a registered version (intended use, data, held-out metrics, limitations).

    Example: [cyan]edgeloop model-card machine-failure@champion --format html --out card.html[/cyan]
    """
    if format not in ("md", "html"):
        raise InputError(f"--format {format!r}: use md or html")
    markdown, title = model_card_markdown(reference, tracking_uri)
    text = card_html(markdown, title) if format == "html" else markdown
    if out is None:
        typer.echo(text, nl=False)
        return
    out.write_text(text)
    console.print(f"wrote {out}")


def _read_records(path: Path) -> list[Any]:
    import orjson

    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise NotFoundError(f"input file {path} not found") from None
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        data = data["records"]
    records = data if isinstance(data, list) else [data]
    if not records:
        raise InputError(f"{path} has no records")
    return records


def explain(
    bundle: Path = typer.Option(..., help="Bundle directory."),
    input: Path = typer.Option(..., "--input", help='JSON file: one record, a list of records or {"records": [...]}.'),
    top_k: int = typer.Option(5, min=1, help="Features listed per record, largest |contribution| first."),
    public_key: Path | None = typer.Option(None, help="Verify the signature with this public key."),
    json_out: bool = typer.Option(False, "--json", help="Print the raw JSON answer (as POST /v1/explain)."),
) -> None:
    """Explain a bundle's predictions: each feature's signed contribution to the logit (logistic regression);
    tree ensembles get the reason and the global permutation importance from the model card instead.

    Example: [cyan]edgeloop explain --bundle bundles/machine-failure --input records.json --top-k 3[/cyan]
    """
    from contracts.bundle import load_bundle
    from contracts.runtime import OnnxModel
    from contracts.signing import load_public_key
    from edge_agent.explain import explain_records

    loaded = load_bundle(bundle, load_public_key(public_key) if public_key else None)
    if public_key is None:
        typer.echo("note: signature not verified (pass --public-key to check who signed this bundle)", err=True)
    model = OnnxModel.load(loaded)
    items = explain_records(model, _read_records(input), min(top_k, len(loaded.manifest.inputs)))
    if json_out:
        import orjson

        console.print_json(orjson.dumps(items).decode())
        return
    m = loaded.manifest
    for index, item in enumerate(items):
        probability = max(item["probabilities"].values())
        console.print(f"[bold]record {index}[/bold]: {m.ref} predicts {item['label']} (p={probability:.3f})")
        if not item["available"]:
            console.print(escape(item["reason"]))
            continue
        table = Table("feature", "value", "contribution", title=f"{item['output']} of {item['toward']}")
        table.add_row("(base: average record)", "", f"{item['base']:+.4f}")
        for entry in item["contributions"]:
            table.add_row(escape(entry["feature"]), escape(str(entry["value"])), f"{entry['contribution']:+.4f}")
        table.add_row("(other features)", "", f"{item['rest']:+.4f}")
        table.add_row("= logit", "", f"{item['logit']:+.4f}")
        console.print(table)
        check = item["check"]
        verdict = "ok" if check["ok"] else "MISMATCH"
        console.print(f"check: |p explained - p model| = {check['abs_diff']:.1e} ({verdict})")
    if m.importance is not None and not items[0]["available"]:
        table = Table("feature", "mean drop", "std", title=f"permutation importance ({m.importance.metric})")
        for feature in m.importance.features:
            table.add_row(escape(feature.feature), f"{feature.mean:.4f}", f"{feature.std:.4f}")
        console.print(table)


def retrain(
    name: str = typer.Argument(..., help="Registered model name (the policy's `model`)."),
    policy: Path = typer.Option(..., help="Retraining policy (YAML; see docs/loop.md)."),
    workdir: Path = typer.Option(Path(".edgeloop/retrain"), help="Where the combined training data is written."),
    tracking_uri: str | None = _TRACKING,
    cloud_url: str | None = typer.Option(
        None, envvar="EDGELOOP_CLOUD_URL", help="Record the retrain in this cloud's audit log (and deploy from it)."
    ),
    token: str | None = typer.Option(None, envvar="EDGELOOP_CLOUD_TOKEN", help="Operator token of the cloud."),
    reason: str | None = typer.Option(None, help="Why (kept in the audit log)."),
    trigger: str = typer.Option(
        "manual",
        help="What started it: manual, schedule or alert:RULE (`edgeloop cloud` "
        "sets it when a policy's trigger fires).",
    ),
) -> None:
    """Retrain a model by hand from its policy: original data plus device feedback, trained in a separate
    `edgeloop train` process, registered as @challenger, tagged with the feedback's lineage, audited.

    With `result: {deploy: canary, group: G}` in the policy and --cloud-url, the challenger is converted and
    rolled out to the group's canary; `deploy: shadow-canary` runs it there in shadow beside the champion and
    the cloud promotes it when its measured accuracy is at least the champion's; with `deploy: wait` an
    operator deploys it.

    Example: [cyan]edgeloop retrain machine-failure --policy retrain.yaml --cloud-url http://127.0.0.1:8700[/cyan]
    """
    from edgeloop.retrain import load_policy, run_edgeloop_process, run_retrain

    loaded = load_policy(policy)
    if loaded.model != name:
        raise InputError(f"policy {policy} is for model {loaded.model!r}, not {name!r}")
    if loaded.result.deploy != "wait" and (not cloud_url or not loaded.result.group):
        raise InputError("the policy deploys to a canary: give --cloud-url and `result.group` in the policy")
    if loaded.data.feedback_source == "cloud" and not cloud_url:
        raise InputError("the policy takes feedback rows from the cloud (feedback_source: cloud): give --cloud-url")
    with console.status(f"retraining {name}"):
        result = run_retrain(loaded, workdir, tracking_uri, trigger, (cloud_url, token) if cloud_url else None)
    console.print(f"registered [bold]{result.name}[/bold] version {result.version} (run {result.run_id})")
    console.print(f"data {result.data_path} sha256 {result.data_sha256[:16]}…, {result.feedback_rows} feedback rows")
    if result.mixture is not None:
        console.print(f"mixture: {result.mixture.describe()}")
    if cloud_url:
        from edgeloop.cmd_cloud import call_cloud

        body = {
            "model": result.name,
            "version": int(result.version),
            "run_id": result.run_id,
            "trigger": trigger,
            "data_sha256": result.data_sha256,
            "feedback_rows": result.feedback_rows,
            "feedback_sha256": result.feedback_sha256,
            "mixture": json.loads(result.mixture.to_json()) if result.mixture else None,
            "deploy": loaded.result.deploy,
            "reason": reason,
        }
        call_cloud("POST", cloud_url, "/v1/retrains", token, json=body)
        console.print("recorded in the audit log (action retrain)")
    if loaded.result.deploy != "wait" and cloud_url and loaded.result.group:
        reference = f"{result.name}/{result.version}"
        extra = ["--tracking-uri", tracking_uri] if tracking_uri else []
        out = workdir / "bundles" / f"{result.name}-v{result.version}"
        run_edgeloop_process(["convert", reference, "--out", str(out), *extra])
        deploy_args = ["deploy", str(out), "--group", loaded.result.group, "--canary", loaded.result.canary]
        deploy_args += ["--soak", str(loaded.result.soak_minutes), "--cloud-url", cloud_url]
        if loaded.result.deploy == "shadow-canary":
            deploy_args.append("--shadow")
        if token:
            deploy_args += ["--token", token]
        run_edgeloop_process(deploy_args)
        how = "in shadow on" if loaded.result.deploy == "shadow-canary" else "rolled out to"
        console.print(f"challenger v{result.version} {how} the canary of group {loaded.result.group}")


def register(app: typer.Typer) -> None:
    app.command("lineage")(lineage)
    app.command("model-card")(model_card)
    app.command("explain")(explain)
    app.command("retrain")(retrain)

"""`edgeloop score`: central batch scoring with the very bundle the devices run (local engine or Spark).

Registered on the main Typer app by `register(app)`; the heavy imports happen inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["register"]

console = Console()
progress_console = Console(stderr=True)


class _CountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "rows")
        total = f"/{int(task.total):,}" if task.total is not None else ""
        suffix = "" if unit == "rows" else f" {unit}"  # the rate column says rows/s
        return Text(f"{int(task.completed):,}{total}{suffix}", style="progress.download")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed and task.elapsed:
            speed = task.completed / task.elapsed
        if task.fields.get("unit", "rows") != "rows":
            return Text("")
        return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s", style="progress.data.speed")


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(bar_width=24),
        _CountColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=progress_console,
        transient=False,
    )


def score_command(
    model: str = typer.Option(..., "--model", help="Bundle directory, or NAME@ALIAS / NAME/VERSION in the registry."),
    input_path: str = typer.Option(..., "--input", help="Parquet file, directory of Parquet/CSV files, or CSV file."),
    output: str = typer.Option(..., "--output", help="Parquet output (a file; a directory with --engine spark)."),
    engine: str | None = typer.Option(None, help="local (streaming onnxruntime) or spark \\[default: local]."),
    batch_rows: int | None = typer.Option(None, min=1, help="Rows per batch fed to onnxruntime \\[default: 65536]."),
    master: str | None = typer.Option(None, help="Spark master URL for --engine spark \\[default: local[2]]."),
    threads: int | None = typer.Option(
        None, min=0, help="Local engine: scoring workers, one thread each \\[default: one per core]."
    ),
    runtime: str | None = typer.Option(
        None,
        help="Local engine: `onnxruntime`, `numba` (tree ensembles walked by compiled code, checked against "
        "onnxruntime on the first rows) or `auto` (numba when installed and the model has trees) \\[default: auto].",
    ),
    spark_io: str | None = typer.Option(
        None,
        help="--engine spark: `pyarrow` (each task reads and writes Parquet itself; shared paths only), `spark` "
        "(Spark reads and writes; any URI) or `auto` (pyarrow for paths, spark for URIs) \\[default: auto].",
    ),
    public_key: Path | None = typer.Option(
        None, help="Verify the bundle's signature with this key \\[default: .edgeloop/keys/edgeloop-signing.pub]."
    ),
    tracking_uri: str | None = typer.Option(
        None,
        help="MLflow tracking URI for NAME@ALIAS and the lineage run \\[default: $EDGELOOP_SCORE_TRACKING_URI, "
        "$EDGELOOP_TRACKING_URI, $MLFLOW_TRACKING_URI, else sqlite in .edgeloop/].",
    ),
) -> None:
    """Score a table with a signed bundle: Parquet/CSV in, Parquet out, predictions identical to the devices'.

    The output keeps every input column the model does not use (ids, timestamps) and adds prediction, one probability_<class> per class, model_name and model_version.

    It is written under a temporary name and renamed when complete. Lineage goes to <output>.lineage.json and, with a tracking store, to an MLflow run in experiment edgeloop-batch-scoring.

    Example: [cyan]edgeloop score --model machine-failure@champion --input data.parquet --output scored.parquet[/cyan]
    """  # noqa: E501
    from pydantic import ValidationError

    from cloud_sync.batch import ScoreSettings, score
    from contracts.errors import InputError

    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "engine": engine,
            "batch_rows": batch_rows,
            "master": master,
            "threads": threads,
            "runtime": runtime,
            "spark_io": spark_io,
            "public_key": public_key,
            "tracking_uri": tracking_uri,
        }.items()
        if value is not None
    }
    try:
        settings = ScoreSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InputError(f"invalid setting {where}: {first['msg']}") from None
    bar = _progress()
    task = bar.add_task(f"scoring ({settings.engine})", total=None, unit="rows")
    started = False

    def on_progress(done: int, total: int | None, unit: str) -> None:
        nonlocal started
        if not started:  # shown once the checks passed and rows flow, never before a one-line error
            bar.start()
            started = True
        bar.update(task, completed=done, total=total, unit=unit)

    try:
        result = score(model, input_path, output, settings, on_progress)
        if started and settings.engine == "local":
            bar.update(task, completed=result.rows, total=result.rows)
    finally:
        if started:
            bar.stop()
    manifest = result.resolved.bundle.manifest
    console.print(
        f"scored [bold]{result.rows:,}[/bold] rows with [bold]{manifest.name}[/bold] v{manifest.version} "
        f"({result.engine} engine) in {result.duration_s:.1f} s, {result.rows_per_s:,.0f} rows/s -> {result.output}"
    )
    details = [f"bundle sha256 {result.resolved.digest[:16]}…"]
    if result.lineage:
        details.append(f"lineage {result.lineage}")
    if result.mlflow_run_id:
        details.append(f"MLflow run {result.mlflow_run_id}")
    console.print("; ".join(details))


def register(app: typer.Typer) -> None:
    """Add `edgeloop score` to the CLI."""
    app.command("score")(score_command)

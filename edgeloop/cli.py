"""The `edgeloop` command line: one Typer app, each subcommand importing its component lazily so that
`edgeloop agent` works with the base (edge) install alone."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from contracts.logs import configure_logging
from edgeloop.errors_cli import run_cli

__all__ = ["app", "main"]

app = typer.Typer(
    name="edgeloop",
    help="Edge and hybrid ML inference: train, convert to signed ONNX bundles, serve on devices, score in batch.\n\n"
    "Example: [cyan]edgeloop sample-data && edgeloop train --ignore reading_id && "
    "edgeloop convert machine-failure@champion --out bundles/machine-failure[/cyan]",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
)
keys_app = typer.Typer(
    help="Manage the Ed25519 key pair that signs bundles and rotate it on a live fleet.\n\n"
    "Example: [cyan]edgeloop keys generate[/cyan]",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
console = Console()


def _show_version(value: bool) -> None:
    if value:
        from edgeloop import __version__

        print(f"edgeloop {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version of edgeloop and exit."
    ),
) -> None:
    """Edge and hybrid ML inference (see `edgeloop --help`)."""


@app.command()
def train(
    data: Path = typer.Option(Path("data/machines.csv"), help="CSV or Parquet file with features and target."),
    target: str = typer.Option("failure_24h", help="Name of the target column."),
    name: str = typer.Option("machine-failure", help="Registered model name."),
    model: str = typer.Option("rf", help="Estimator family: logreg, rf or gb."),
    ignore: list[str] = typer.Option([], help="Columns to leave out (ids, timestamps); repeatable."),
    tracking_uri: str | None = typer.Option(
        None,
        help=r"MLflow tracking URI \[default: $EDGELOOP_TRACKING_URI, "
        r"$MLFLOW_TRACKING_URI, else sqlite in $EDGELOOP_HOME].",
    ),
) -> None:
    """Train a pipeline, evaluate it on a held-out split, log it to MLflow and register a new version.

    The first version of a name gets alias [bold]champion[/bold], later ones [bold]challenger[/bold].

    Example: [cyan]edgeloop train --data data/machines.csv --target failure_24h --model gb --ignore reading_id[/cyan]
    """
    from contracts.tracking import safe_uri
    from trainer.settings import TrainSettings
    from trainer.train import train_model

    settings = TrainSettings(tracking_uri=tracking_uri) if tracking_uri else TrainSettings()
    with console.status(f"training {model} on {data}"):
        result = train_model(data, target, name, model, ignore, settings)
    metrics = "  ".join(f"{k}={v:.3f}" for k, v in result.metrics.items())
    console.print(f"registered [bold]{result.name}[/bold] version {result.version} as @{result.alias}")
    console.print(f"held-out: {metrics}")
    console.print(f"run {result.run_id} in {safe_uri(result.tracking_uri)}")


@app.command()
def convert(
    reference: str = typer.Argument(..., help="NAME@ALIAS, NAME/VERSION or runs:/RUN_ID/model."),
    out: Path = typer.Option(..., help="Bundle directory to write (replaced atomically)."),
    tracking_uri: str | None = typer.Option(
        None,
        help=r"MLflow tracking URI \[default: $EDGELOOP_TRACKING_URI, "
        r"$MLFLOW_TRACKING_URI, else sqlite in $EDGELOOP_HOME].",
    ),
    keys_dir: Path | None = typer.Option(None, help="Directory of the signing key \\[default: .edgeloop/keys]."),
    require_key: bool = typer.Option(
        False, "--require-key", help="Fail when the signing key is missing instead of generating a new pair (CI)."
    ),
    tolerance: float | None = typer.Option(None, help="Parity tolerance on probabilities \\[default: 1e-5]."),
    min_metric: list[str] = typer.Option(
        [], help="Metric gate NAME=FLOOR on held-out metrics (accuracy, precision, recall, f1, roc_auc); repeatable."
    ),
) -> None:
    """Convert a registered model to a signed ONNX bundle, gated by held-out metric floors, onnx.checker, parity
    and golden samples.

    Example: [cyan]edgeloop convert machine-failure@champion --out bundles/mf --min-metric roc_auc=0.8[/cyan]
    """
    from converter.convert import convert_model
    from converter.gates import parse_metric_floors
    from converter.settings import ConvertSettings

    overrides: dict[str, object] = {}
    if tracking_uri:
        overrides["tracking_uri"] = tracking_uri
    if keys_dir:
        overrides["keys_dir"] = keys_dir
    if require_key:  # the flag only turns it on; EDGELOOP_REQUIRE_KEY or [convert] require_key otherwise
        overrides["require_key"] = True
    if tolerance is not None:
        overrides["parity_tolerance"] = tolerance
    if min_metric:
        overrides["min_metrics"] = parse_metric_floors(min_metric)
    with console.status(f"converting {reference}"):
        bundle = convert_model(reference, out, ConvertSettings(**overrides))  # type: ignore[arg-type]
    m = bundle.manifest
    console.print(f"bundle [bold]{m.name}[/bold] v{m.version} -> {bundle.path}")
    console.print(
        f"parity on {m.parity.rows} held-out rows: {m.parity.label_mismatches} label mismatches, "
        f"max |dp| {m.parity.max_abs_diff:.1e} <= {m.parity.tolerance:.0e}; "
        f"{len(m.golden_samples)} golden samples; onnx sha256 {m.onnx.sha256[:16]}…; signed"
    )
    for replay in m.parity.runtimes or []:
        console.print(
            f"  {replay.runtime}: {replay.label_mismatches} label mismatches, max |dp| {replay.max_abs_diff:.1e} "
            f"(held-out), {replay.golden_max_abs_diff:.1e} (golden samples)"
        )


@app.command()
def predict(
    bundle: Path = typer.Option(..., help="Bundle directory."),
    data: Path = typer.Option(Path("data/machines.csv"), help="CSV file with the model's columns."),
    rows: int = typer.Option(5, min=1, help="How many rows to score."),
    public_key: Path | None = typer.Option(None, help="Verify the signature with this public key."),
) -> None:
    """Score the first rows of a CSV with a bundle on onnxruntime and print them.

    Example: [cyan]edgeloop predict --bundle bundles/machine-failure --data data/machines.csv --rows 5[/cyan]
    """
    from edgeloop.quick_predict import predict_csv_rows

    predict_csv_rows(bundle, data, rows, public_key, console)


@app.command("sample-data")
def sample_data(
    out: Path = typer.Option(Path("data/machines.csv"), help="CSV or .parquet file to write."),
    rows: int = typer.Option(6000, min=10, help="Number of readings."),
    seed: int = typer.Option(7, help="Random seed (same seed, same file)."),
    drift: bool = typer.Option(False, help="Generate drifted readings (heat wave, worn bearings, new firmware)."),
) -> None:
    """Write the deterministic predictive-maintenance sample data set.

    Example: [cyan]edgeloop sample-data --out data/machines.csv --rows 6000[/cyan]
    """
    from trainer.sample_data import write_machines

    path = write_machines(out, rows, seed, drift)
    console.print(f"wrote {rows} readings to {path}")


@keys_app.command("generate")
def keys_generate(
    out: Path | None = typer.Option(None, help="Directory for the key pair \\[default: $EDGELOOP_HOME/keys]."),
    overwrite: bool = typer.Option(False, help="Replace an existing key pair."),
) -> None:
    """Create an Ed25519 key pair: the private key signs bundles, devices get the public key.

    `edgeloop convert` signs with the pair in $EDGELOOP_HOME/keys (default ./.edgeloop/keys) and makes one
    there if none exists.

    Example: [cyan]edgeloop keys generate --out .edgeloop/keys[/cyan]
    """
    from contracts.settings import edgeloop_home
    from contracts.signing import generate_keypair

    private, public = generate_keypair(out or edgeloop_home() / "keys", overwrite)
    console.print(f"private key {private} (keep it secret)\npublic key  {public} (copy it to devices)")


from edgeloop.cmd_keys import register as _register_keys  # noqa: E402

_register_keys(keys_app)

from edgeloop.cmd_score import register as _register_score  # noqa: E402

_register_score(app)


from edgeloop.cmd_agent import register as _register_agent  # noqa: E402

_register_agent(app)

from edgeloop.cmd_cloud import register as _register_cloud  # noqa: E402
from edgeloop.cmd_demo import register as _register_demo  # noqa: E402
from edgeloop.cmd_fleet import register as _register_fleet  # noqa: E402
from edgeloop.cmd_loop import register as _register_loop  # noqa: E402

_register_cloud(app)  # cloud, deploy, rollout, audit
_register_fleet(app)  # devices, alerts [ack]
_register_demo(app)  # demo: the whole loop on one machine
_register_loop(app)  # lineage, model-card, retrain, impact


def main() -> None:
    configure_logging()
    run_cli(app)


if __name__ == "__main__":
    main()

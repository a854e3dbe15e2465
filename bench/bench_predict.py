"""Prediction speed: the sklearn pipeline (`predict_proba`) against onnxruntime and the numpy runtime, one bundle.

    .venv/bin/python bench/bench_predict.py                      # rf, logreg, gb on 6000 sample rows
    .venv/bin/python bench/bench_predict.py --single 100 --batch 10 --models rf

Each model is trained by the trainer into a temporary MLflow store (SQLite) and converted by the converter,
then the three score the same rows, one after the other, in this process:

- single row: sklearn `predict_proba` on a one-row DataFrame (how a Python service would call it) against
  `OnnxModel.predict_feed` on a prebuilt one-row feed (inference alone) and `OnnxModel.predict_records` on a
  JSON-like record (schema check + encoding + inference: the edge agent's path), each on onnxruntime (one
  intra-op thread, as the agent runs it) and on the numpy runtime (`runtime="numpy"`, issue 16).
- batch: 10,000 rows, sklearn on a DataFrame against onnxruntime on a prebuilt columnar feed, with the
  session's intra-op threads left to onnxruntime (all cores), 1 and 2, and the numpy runtime (one thread).

Figures are medians of many calls; the contenders take turns in blocks so that a change in the machine's
load hits them alike. Not a test: they depend on the machine and its load.
The random forest keeps `n_jobs=-1` from training, as the registered model does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from contracts.bundle import Bundle, load_bundle  # noqa: E402
from contracts.logs import configure_logging  # noqa: E402
from contracts.runtime import OnnxModel, encode_columns  # noqa: E402
from contracts.signing import load_public_key  # noqa: E402


@dataclass(frozen=True)
class Row:
    model: str
    case: str
    rows: int
    sklearn_ms: float | None
    onnx_ms: float
    numpy_ms: float | None = None

    @property
    def ratio(self) -> float | None:
        return None if self.sklearn_ms is None else self.sklearn_ms / self.onnx_ms


def medians_ms(calls: dict[str, Callable[[], object]], repeats: int, rounds: int = 10) -> dict[str, float]:
    """Median wall time per call of each contender, `repeats` calls each.

    Contenders take turns in `rounds` blocks (one untimed call, then repeats/rounds timed ones), so a change
    in the machine's load hits all of them, while calls within a block still run back to back (warm caches).
    """
    block = max(1, repeats // rounds)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(max(1, repeats // block)):
        for name, call in calls.items():
            call()
            for _ in range(block):
                started = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1000 for name, values in samples.items()}


def build(work: Path, kinds: list[str], rows: int) -> tuple[pd.DataFrame, dict[str, tuple[object, Bundle]]]:
    """Sample data, then train + convert each family; returns the features and {kind: (sklearn, bundle)}."""
    import mlflow

    from converter.convert import convert_model
    from converter.settings import ConvertSettings
    from trainer.data import load_training_data
    from trainer.sample_data import TARGET, write_machines
    from trainer.settings import TrainSettings
    from trainer.train import train_model

    data = write_machines(work / "machines.csv", rows=rows)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    keys = work / "keys"
    models: dict[str, tuple[object, Bundle]] = {}
    for kind in kinds:
        settings = TrainSettings(tracking_uri=tracking, artifact_root=work / "artifacts")
        result = train_model(data, TARGET, f"bench-{kind}", kind, ["reading_id"], settings)
        convert_model(
            f"bench-{kind}/{result.version}", work / kind, ConvertSettings(tracking_uri=tracking, keys_dir=keys)
        )
        bundle = load_bundle(work / kind, load_public_key(keys / "edgeloop-signing.pub"))
        mlflow.set_tracking_uri(tracking)
        models[kind] = (mlflow.sklearn.load_model(f"models:/bench-{kind}/{result.version}"), bundle)
    features = load_training_data(data, TARGET, ["reading_id"]).features
    return features, models


def measure(
    kind: str, sklearn_model: object, bundle: Bundle, features: pd.DataFrame, single: int, batch: int, batch_rows: int
) -> list[Row]:
    from converter.parity import records_of

    inputs = bundle.manifest.inputs
    names = bundle.manifest.feature_names
    rows: list[Row] = []
    default = OnnxModel.load(bundle)  # intra_op_threads=0: onnxruntime picks (all cores)
    one_thread = OnnxModel.load(bundle, intra_op_threads=1)  # the agent's setting
    numpy_model = OnnxModel.load(bundle, runtime="numpy")

    one = features.iloc[[7]]
    one_feed = encode_columns({name: one[name].to_numpy() for name in names}, inputs)
    (one_record,) = records_of(one, inputs)
    proba = sklearn_model.predict_proba  # type: ignore[attr-defined]
    single_ms = medians_ms(
        {
            "sklearn": lambda: proba(one),
            "feed": lambda: one_thread.predict_feed(one_feed),
            "records": lambda: one_thread.predict_records([one_record]),
            "numpy feed": lambda: numpy_model.predict_feed(one_feed),
            "numpy records": lambda: numpy_model.predict_records([one_record]),
        },
        single,
    )
    rows.append(Row(kind, "1 row: predict_feed", 1, single_ms["sklearn"], single_ms["feed"], single_ms["numpy feed"]))
    rows.append(
        Row(kind, "1 row: predict_records", 1, single_ms["sklearn"], single_ms["records"], single_ms["numpy records"])
    )

    repeat = -(-batch_rows // len(features))
    many = pd.concat([features] * repeat, ignore_index=True).iloc[:batch_rows]
    many_feed = encode_columns({name: many[name].to_numpy() for name in names}, inputs)
    assert np.array_equal(default.predict_feed(many_feed).labels, sklearn_model.predict(many))  # type: ignore[attr-defined]
    assert np.array_equal(numpy_model.predict_feed(many_feed).labels, default.predict_feed(many_feed).labels)
    two_threads = OnnxModel.load(bundle, intra_op_threads=2)
    batch_ms = medians_ms(
        {
            "sklearn": lambda: proba(many),
            "auto": lambda: default.predict_feed(many_feed),
            "1": lambda: one_thread.predict_feed(many_feed),
            "2": lambda: two_threads.predict_feed(many_feed),
            "numpy": lambda: numpy_model.predict_feed(many_feed),
        },
        batch,
    )
    label = f"{batch_rows // 1000}k rows"
    rows.append(Row(kind, f"{label}: threads auto (0)", batch_rows, batch_ms["sklearn"], batch_ms["auto"]))
    rows.append(
        Row(kind, f"{label}: intra_op_threads=1", batch_rows, batch_ms["sklearn"], batch_ms["1"], batch_ms["numpy"])
    )
    rows.append(Row(kind, f"{label}: intra_op_threads=2", batch_rows, batch_ms["sklearn"], batch_ms["2"]))
    return rows


def _rate(rows: int, ms: float | None) -> str:
    return "" if ms is None or rows == 1 else f"{rows / ms * 1000:,.0f}"


def render(rows: list[Row], args: argparse.Namespace) -> Table:
    table = Table(
        title=(
            f"sklearn predict_proba vs onnxruntime vs the numpy runtime, same bundle (median of {args.single} "
            f"single / {args.batch} batch calls; {os.cpu_count()} cores)"
        )
    )
    table.add_column("model")
    table.add_column("case")
    table.add_column("sklearn ms", justify="right")
    table.add_column("onnxruntime ms", justify="right")
    table.add_column("numpy ms", justify="right")
    table.add_column("onnxruntime rows/s", justify="right")
    table.add_column("numpy rows/s", justify="right")
    table.add_column("sklearn / onnx", justify="right", style="bold")
    table.add_column("numpy / onnx", justify="right", style="bold")
    for row in rows:
        table.add_row(
            row.model,
            row.case,
            "" if row.sklearn_ms is None else f"{row.sklearn_ms:.3f}",
            f"{row.onnx_ms:.3f}",
            "" if row.numpy_ms is None else f"{row.numpy_ms:.3f}",
            _rate(row.rows, row.onnx_ms),
            _rate(row.rows, row.numpy_ms),
            "" if row.ratio is None else f"{row.ratio:.1f}x",
            "" if row.numpy_ms is None else f"{row.numpy_ms / row.onnx_ms:.1f}x",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["rf", "logreg", "gb"], choices=["rf", "logreg", "gb"])
    parser.add_argument("--rows", type=int, default=6000, help="sample rows to train on")
    parser.add_argument("--single", type=int, default=300, help="single-row calls per measurement")
    parser.add_argument("--batch", type=int, default=30, help="batch calls per measurement")
    parser.add_argument("--batch-rows", type=int, default=10_000)
    args = parser.parse_args()
    configure_logging("WARNING")
    console = Console(width=None if sys.stdout.isatty() else 120)
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        os.environ["EDGELOOP_HOME"] = tmp
        with console.status("training and converting"):
            features, models = build(Path(tmp), args.models, args.rows)
        rows: list[Row] = []
        for kind, (sklearn_model, bundle) in models.items():
            with console.status(f"measuring {kind}"):
                rows.extend(measure(kind, sklearn_model, bundle, features, args.single, args.batch, args.batch_rows))
    console.print(render(rows, args))
    console.print(
        "1 row: predict_feed is inference on a prebuilt feed; predict_records adds the schema check and encoding "
        "of a JSON-like record. sklearn / onnx > 1 means onnxruntime is faster; numpy / onnx > 1 means the numpy "
        "runtime is slower. Single rows on onnxruntime use one intra-op thread (the agent's setting)."
    )
    for row in rows:
        if row.model == "rf" and row.case == "1 row: predict_feed" and row.numpy_ms is not None:
            console.print(f"rf (100 trees), 1 row on the numpy runtime: {row.numpy_ms * 1000:.0f} µs (goal <= 200 µs)")


if __name__ == "__main__":
    main()

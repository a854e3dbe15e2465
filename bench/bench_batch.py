"""Batch scoring speed: our local and Spark engines against raw onnxruntime, sklearn and MLflow's spark_udf.

    .venv/bin/python bench/bench_batch.py                 # 1M rows (+ a 10M-row file for peak memory)
    .venv/bin/python bench/bench_batch.py --rows 100000   # quick run; the memory check uses 10x --rows

One run, same data, same machine. A 100-tree random forest (depth 10, as `edgeloop train --model rf` builds
it) on 20 float features is trained and registered by the trainer in a temporary MLflow store (SQLite) and
converted to a signed bundle by the converter. Then the same rows are scored by:

- raw `session.run` on in-memory float32 arrays, 10k-row batches, 2 intra-op threads (the ceiling), with
  onnxruntime's default spinning threads and with spinning off (as the local engine runs it);
- the local engine, Parquet to Parquet (`edgeloop score` in a subprocess; rows/s from the job's lineage,
  which counts reading, encoding, inference, writing and the rename, not Python's start-up);
- sklearn `predict_proba` on in-memory pandas chunks of 10k rows (`n_jobs=-1`, as registered);
- `mlflow.pyfunc.spark_udf` on the registered sklearn model, Spark `local[2]`, Parquet to Parquet;
- our Spark engine, `local[2]`, Parquet to Parquet (same Spark session; JVM start-up excluded for both).

Peak memory: the local engine runs as a child of a fresh Python process on --rows and on 10x --rows, which
reads `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`. The data is written in row groups of 131,072 rows (a
common writer default), so Spark has several tasks per file. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from contracts.logs import configure_logging  # noqa: E402

FEATURES = [f"f{i:02d}" for i in range(20)]
TARGET = "label"
ROW_GROUP = 131_072
CHUNK = 10_000
EDGELOOP = Path(sys.executable).with_name("edgeloop")


@dataclass(frozen=True)
class Result:
    name: str
    rows: int
    seconds: float
    note: str = ""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def make_rows(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES)))
    weights = np.linspace(-1.5, 1.5, len(FEATURES))
    logit = x @ weights + 0.8 * np.sin(3 * x[:, 0]) * x[:, 1] + rng.normal(0, 0.5, rows)
    columns: dict[str, np.ndarray] = {"row_id": np.arange(rows, dtype=np.int64)}
    columns.update({name: x[:, i] for i, name in enumerate(FEATURES)})
    columns[TARGET] = (logit > 0).astype(np.int64)
    return pa.table(columns)


def write_rows(path: Path, rows: int, seed: int) -> Path:
    """Write `rows` rows in 1M-row slices (bounded memory), row groups of ROW_GROUP rows."""
    step = 1_000_000
    first = make_rows(min(step, rows), seed)
    with pq.ParquetWriter(path, first.schema) as writer:
        writer.write_table(first, row_group_size=ROW_GROUP)
        for start in range(step, rows, step):
            chunk = make_rows(min(step, rows - start), seed + start)
            chunk = chunk.set_column(0, "row_id", pa.array(np.arange(start, start + chunk.num_rows)))
            writer.write_table(chunk, row_group_size=ROW_GROUP)
    return path


def train_and_convert(work: Path) -> tuple[Path, Path, str, str]:
    """Trainer + converter, the real way; returns (bundle dir, public key, tracking uri, model uri)."""
    from converter.convert import convert_model
    from converter.settings import ConvertSettings
    from trainer.settings import TrainSettings
    from trainer.train import train_model

    train = work / "train.parquet"
    make_rows(50_000, seed=1).to_pandas().to_parquet(train, index=False)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    settings = TrainSettings(tracking_uri=tracking, artifact_root=work / "artifacts")
    result = train_model(train, TARGET, "bench-batch", "rf", ["row_id"], settings)
    bundle = work / "bundle"
    convert_model(
        f"bench-batch/{result.version}", bundle, ConvertSettings(tracking_uri=tracking, keys_dir=work / "keys")
    )
    return bundle, work / "keys" / "edgeloop-signing.pub", tracking, f"models:/bench-batch/{result.version}"


def raw_onnxruntime(bundle: Path, data: Path, spinning: bool) -> Result:
    import onnxruntime as ort

    from contracts.bundle import load_bundle

    manifest = load_bundle(bundle).manifest
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(bundle / manifest.onnx.file), options, providers=["CPUExecutionProvider"])
    table = pq.read_table(data, columns=FEATURES)
    feed = {name: table[name].to_numpy().astype(np.float32).reshape(-1, 1) for name in FEATURES}
    outputs = [manifest.onnx.label_output, manifest.onnx.probabilities_output]
    rows = table.num_rows
    session.run(outputs, {k: v[:CHUNK] for k, v in feed.items()})  # warm-up
    started = time.perf_counter()
    for start in range(0, rows, CHUNK):
        session.run(outputs, {k: v[start : start + CHUNK] for k, v in feed.items()})
    name = "raw session.run, in-memory arrays" + ("" if spinning else ", threads not spinning")
    return Result(name, rows, time.perf_counter() - started, "2 threads, 10k-row batches")


def sklearn_chunks(model_uri: str, tracking: str, data: Path) -> Result:
    import mlflow

    mlflow.set_tracking_uri(tracking)
    model = mlflow.sklearn.load_model(model_uri)
    frame = pq.read_table(data, columns=FEATURES).to_pandas()
    model.predict_proba(frame.iloc[:CHUNK])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(frame), CHUNK):
        model.predict_proba(frame.iloc[start : start + CHUNK])
    return Result("sklearn predict_proba, pandas chunks", len(frame), time.perf_counter() - started, "n_jobs=-1")


def local_engine(bundle: Path, key: Path, data: Path, out: Path, home: Path) -> tuple[Result, int]:
    """Run `edgeloop score` as the child of a fresh Python process; returns the result and the child's peak RSS."""
    command = [str(EDGELOOP), "score", "--model", str(bundle), "--input", str(data), "--output", str(out)]
    command += ["--public-key", str(key)]
    probe = (
        "import resource, subprocess, sys; "
        f"done = subprocess.run({command!r}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
        "sys.stderr.write(done.stderr if done.returncode else ''); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)"
    )
    env = {**os.environ, "EDGELOOP_HOME": str(home), "EDGELOOP_LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"edgeloop score failed: {done.stderr.strip()}")
    peak_kib = int(done.stdout.strip().splitlines()[-1])
    lineage = orjson.loads(Path(f"{out}.lineage.json").read_bytes())
    rows, seconds = lineage["output"]["rows"], lineage["duration_s"]
    threads = lineage["engine"]["threads"]
    return Result("local engine, Parquet -> Parquet", rows, seconds, f"{threads} threads"), peak_kib


def spark_udf(spark: object, model_uri: str, tracking: str, data: Path, out: Path) -> Result:
    import mlflow
    from pyspark.sql.functions import col

    mlflow.set_tracking_uri(tracking)
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type="double", env_manager="local")
    frame = spark.read.parquet(str(data))  # type: ignore[attr-defined]
    rows = frame.count()
    started = time.perf_counter()
    frame.withColumn("prediction", udf(*[col(name) for name in FEATURES])).write.mode("overwrite").parquet(str(out))
    return Result("mlflow.pyfunc.spark_udf (sklearn), local[2]", rows, time.perf_counter() - started, "labels only")


def spark_engine(bundle: Path, key: Path, data: Path, out: Path) -> Result:
    from cloud_sync.batch import ScoreSettings, score

    settings = ScoreSettings(engine="spark", public_key=key, master="local[2]")
    started = time.perf_counter()
    result = score(str(bundle), data, out, settings)
    seconds = time.perf_counter() - started
    return Result("our Spark engine (mapInArrow), local[2]", result.rows, seconds, "labels + probabilities")


def render(results: list[Result], raw: Result, udf: Result | None, peaks: dict[int, int]) -> Table:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    table = Table(title=f"Batch scoring, RF 100 trees x 20 features ({os.cpu_count()} cores, load avg now {load})")
    for name, justify in (("path", "left"), ("rows", "right"), ("seconds", "right"), ("rows/s", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("vs best raw", justify="right", style="bold")
    table.add_column("vs spark_udf", justify="right")
    table.add_column("note")
    for result in results:
        table.add_row(
            result.name,
            f"{result.rows:,}",
            f"{result.seconds:.2f}",
            f"{result.rows_per_s:,.0f}",
            f"{result.rows_per_s / raw.rows_per_s:.0%}",
            f"{result.rows_per_s / udf.rows_per_s:.1f}x" if udf else "",
            result.note,
        )
    for rows, kib in sorted(peaks.items()):
        table.add_row(f"local engine, peak RSS at {rows:,} rows", "", "", "", "", "", f"{kib / 1024:,.0f} MiB")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows scored by every path")
    parser.add_argument("--no-spark", action="store_true", help="skip the two Spark paths")
    parser.add_argument("--keep", type=Path, help="keep the data and outputs in this directory")
    args = parser.parse_args()
    configure_logging("WARNING")
    console = Console(width=None if sys.stdout.isatty() else 150)
    big_rows = 10 * args.rows
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-batch-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        home = work / "home"
        os.environ["EDGELOOP_HOME"] = str(home)
        with console.status("training and converting the forest"):
            bundle, key, tracking, model_uri = train_and_convert(work)
        with console.status(f"writing {args.rows:,} and {big_rows:,} rows of Parquet"):
            data = write_rows(work / "data.parquet", args.rows, seed=2)
            big = write_rows(work / "data-10x.parquet", big_rows, seed=3)
        peaks: dict[int, int] = {}
        with console.status("raw onnxruntime"):
            raw_default = raw_onnxruntime(bundle, data, spinning=True)
            raw_quiet = raw_onnxruntime(bundle, data, spinning=False)
        with console.status("local engine"):
            local, peaks[args.rows] = local_engine(bundle, key, data, work / "local.parquet", home)
        with console.status("sklearn"):
            sklearn = sklearn_chunks(model_uri, tracking, data)
        results = [raw_default, raw_quiet, local, sklearn]
        udf = ours = None
        if not args.no_spark:
            from cloud_sync.batch.spark_engine import spark_session

            with console.status("Spark: start and warm up"):
                spark = spark_session("local[2]", 65_536)
                spark.read.parquet(str(data)).count()
            with console.status("Spark: mlflow spark_udf"):
                udf = spark_udf(spark, model_uri, tracking, data, work / "udf.parquet")
            with console.status("Spark: our engine"):
                ours = spark_engine(bundle, key, data, work / "spark.parquet")
            results += [udf, ours]
            spark.stop()
        with console.status(f"local engine on {big_rows:,} rows (peak memory)"):
            big_local, peaks[big_rows] = local_engine(bundle, key, big, work / "local-10x.parquet", home)
        results.append(
            Result(f"local engine, Parquet -> Parquet, {big_rows:,} rows", big_local.rows, big_local.seconds)
        )
    best_raw = max(raw_default, raw_quiet, key=lambda r: r.rows_per_s)
    console.print(render(results, best_raw, udf, peaks))
    summary = [f"local engine / best raw onnxruntime: {local.rows_per_s / best_raw.rows_per_s:.0%} (goal >= 85 %)"]
    if udf and ours:
        summary.append(f"our Spark engine / spark_udf: {ours.rows_per_s / udf.rows_per_s:.1f}x (goal >= 3x)")
    summary.append(f"peak RSS at 10x rows / at 1x rows: {peaks[big_rows] / peaks[args.rows]:.2f} (goal: flat)")
    console.print("; ".join(summary))


if __name__ == "__main__":
    main()

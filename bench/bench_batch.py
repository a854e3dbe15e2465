"""Batch scoring speed: our local and Spark engines against raw onnxruntime, sklearn and MLflow's spark_udf.

    .venv/bin/python bench/bench_batch.py                 # 1M rows (+ a 10M-row file for peak memory)
    .venv/bin/python bench/bench_batch.py --rows 100000   # quick run; the memory check uses 10x --rows

One run, same data, same machine. A 100-tree random forest (depth 10, as `edgeloop train --model rf` builds
it) on 20 float features is trained and registered by the trainer in a temporary MLflow store (SQLite) and
converted to a signed bundle by the converter. Then the same rows are scored by:

- raw `session.run` on in-memory float32 arrays, 10k-row batches, 2 intra-op threads (the ceiling), with
  onnxruntime's default spinning threads and with spinning off (as the local engine runs it);
- raw compiled tree walk (the numba runtime of `edgeloop score`, contracts/compiled_trees.py) on the same
  in-memory arrays, 10k-row batches on one thread per core: the ceiling of the local engine's default runtime;
- the local engine, Parquet to Parquet (`edgeloop score` in a subprocess, one worker per core; rows/s from
  the job's lineage, which counts loading the model, the check against onnxruntime, reading, encoding,
  inference, writing and the rename, not Python's start-up), with its default runtime (`auto`: the compiled
  tree walk for this forest) and with `--runtime onnxruntime` (one session per core, one intra-op thread each);
- sklearn `predict_proba` on in-memory pandas chunks of 10k rows (`n_jobs=-1`, as registered);
- `mlflow.pyfunc.spark_udf` on the registered sklearn model, Spark `local[2]`, Parquet to Parquet;
- our Spark engine, `local[2]`, Parquet to Parquet (same Spark session; JVM start-up excluded for both),
  with Spark's I/O (`spark_io=spark`, mapInArrow) and with pyarrow I/O in the tasks (`spark_io=pyarrow`).

Besides wall time, each path's CPU time is measured over this process and all its descendants (the JVM, its
Python workers, the `edgeloop score` child): on a shared machine the wall time follows the other engineers'
load, the CPU seconds per row much less.

Peak memory: the local engine runs as a child of a fresh Python process on --rows and on 10x --rows, which
reads `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`. The data is written in row groups of 131,072 rows (a
common writer default), so Spark has several tasks per file. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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


def cpu_seconds() -> float:
    """CPU time of this process, its finished children and its live descendants (Linux /proc; else own)."""
    own = os.times()
    total = own.user + own.system + own.children_user + own.children_system
    try:
        tick = os.sysconf("SC_CLK_TCK")
        parents: dict[int, int] = {}
        times: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                fields = stat[stat.rfind(")") + 2 :].split()
                parents[int(entry)] = int(fields[1])
                times[int(entry)] = sum(int(value) for value in fields[11:15]) / tick
    except (OSError, ValueError):
        return total
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    stack = list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        total += times.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


@dataclass(frozen=True)
class Result:
    name: str
    rows: int
    seconds: float
    note: str = ""
    cpu: float = 0.0
    """CPU seconds (this process tree) spent while the path ran."""

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


def in_memory(session: Any, manifest: Any, data: Path) -> tuple[dict[str, np.ndarray], list[str], int]:
    """The raw paths' input: the features of `data` as float32 columns, the outputs to ask for and the row count,
    after one warm-up call of `session` (an onnxruntime or numpy session) on the first chunk."""
    table = pq.read_table(data, columns=FEATURES)
    feed = {name: table[name].to_numpy().astype(np.float32).reshape(-1, 1) for name in FEATURES}
    outputs = [manifest.onnx.label_output, manifest.onnx.probabilities_output]
    session.run(outputs, {k: v[:CHUNK] for k, v in feed.items()})
    return feed, outputs, table.num_rows


def raw_onnxruntime(bundle: Path, data: Path, spinning: bool) -> Result:
    import onnxruntime as ort

    from contracts.bundle import load_bundle

    manifest = load_bundle(bundle).manifest
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(bundle / manifest.onnx.file), options, providers=["CPUExecutionProvider"])
    feed, outputs, rows = in_memory(session, manifest, data)
    started = time.perf_counter()
    for start in range(0, rows, CHUNK):
        session.run(outputs, {k: v[start : start + CHUNK] for k, v in feed.items()})
    name = "raw session.run, in-memory arrays" + ("" if spinning else ", threads not spinning")
    return Result(name, rows, time.perf_counter() - started, "2 threads, 10k-row batches")


def raw_compiled_walk(bundle: Path, data: Path) -> Result:
    from concurrent.futures import ThreadPoolExecutor

    from contracts.bundle import load_bundle
    from contracts.runtime_numpy import NumpySession

    manifest = load_bundle(bundle).manifest
    session = NumpySession.load(bundle / manifest.onnx.file, compile_trees=True)
    feed, outputs, rows = in_memory(session, manifest, data)
    workers = len(os.sched_getaffinity(0))
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as executor:
        list(
            executor.map(
                lambda start: session.run(outputs, {k: v[start : start + CHUNK] for k, v in feed.items()}),
                range(0, rows, CHUNK),
            )
        )
    return Result("raw compiled tree walk", rows, time.perf_counter() - started, f"{workers} threads")


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


def local_engine(
    bundle: Path, key: Path, data: Path, out: Path, home: Path, runtime: str = "auto"
) -> tuple[Result, int]:
    """Run `edgeloop score` as the child of a fresh Python process; returns the result and the child's peak RSS."""
    command = [str(EDGELOOP), "score", "--model", str(bundle), "--input", str(data), "--output", str(out)]
    command += ["--public-key", str(key), "--runtime", runtime]
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
    engine = lineage["engine"]
    return Result("local engine", rows, seconds, f"{engine['sessions']} workers, {engine['runtime']}"), peak_kib


def spark_udf(spark: object, udf: object, data: Path, out: Path) -> Result:
    from pyspark.sql.functions import col

    # spark_udf as its users get it: Spark's default Arrow batch of 10,000 rows (our engine sets its own).
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")  # type: ignore[attr-defined]
    frame = spark.read.parquet(str(data))  # type: ignore[attr-defined]
    rows = frame.count()
    started = time.perf_counter()
    scored = frame.withColumn("prediction", udf(*[col(name) for name in FEATURES]))  # type: ignore[operator]
    scored.write.mode("overwrite").parquet(str(out))
    return Result("mlflow.pyfunc.spark_udf (sklearn), local[2]", rows, time.perf_counter() - started, "labels only")


def warm_up_spark(spark: object, udf: object, data: Path, work: Path) -> None:
    """JIT, Python workers, Arrow paths: the first Spark job of a session is several times slower than the next."""
    from pyspark.sql.functions import col

    frame = spark.read.parquet(str(data)).limit(200_000)  # type: ignore[attr-defined]
    frame.mapInArrow(lambda batches: (b for b in batches), frame.schema).write.mode("overwrite").parquet(
        str(work / "warm-1")
    )
    scored = frame.withColumn("prediction", udf(*[col(name) for name in FEATURES]))  # type: ignore[operator]
    scored.write.mode("overwrite").parquet(str(work / "warm-2"))


def warm_up_ours(bundle: Path, key: Path, data: Path, work: Path) -> None:
    """Both I/O modes once on 200k rows: each Python worker loads its onnxruntime session on its first task."""
    sample = work / "warm.parquet"
    pq.write_table(pq.read_table(data).slice(0, 200_000), sample, row_group_size=ROW_GROUP // 4)
    for io in ("spark", "pyarrow"):
        spark_engine(bundle, key, sample, work / f"warm-{io}.parquet", io)


def spark_engine(bundle: Path, key: Path, data: Path, out: Path, io: str) -> Result:
    from cloud_sync.batch import ScoreSettings, score

    settings = ScoreSettings(engine="spark", public_key=key, master="local[2]", spark_io=io)  # type: ignore[arg-type]
    started = time.perf_counter()
    result = score(str(bundle), data, out, settings)
    seconds = time.perf_counter() - started
    return Result(f"our Spark engine ({io} I/O), local[2]", result.rows, seconds, "labels + probabilities")


def measured(run: Callable[[], Result]) -> Result:
    """`run()` with the CPU seconds of this process tree spent meanwhile."""
    before = cpu_seconds()
    result = run()
    return replace(result, cpu=cpu_seconds() - before)


@dataclass
class Series:
    """One path measured once per round; rounds interleave the paths so that load changes hit all alike."""

    name: str
    note: str = ""
    results: list[Result] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return statistics.median(r.rows_per_s for r in self.results)

    @property
    def cpu_per_million(self) -> float:
        return statistics.median(r.cpu / r.rows * 1e6 for r in self.results)

    @property
    def spread(self) -> str:
        values = [r.rows_per_s for r in self.results]
        return f"{min(values):,.0f}-{max(values):,.0f}" if len(values) > 1 else ""


def render(series: list[Series], raw: Series, udf: Series | None, peaks: dict[int, int], rounds: int) -> Table:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    table = Table(
        title=f"Batch scoring, RF 100 trees (depth 10) x 20 float features, median of {rounds} interleaved rounds "
        f"({os.cpu_count()} cores, load avg at the end {load})"
    )
    for name, justify in (("path", "left"), ("rows", "right"), ("rows/s (median)", "right"), ("range", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("vs best raw", justify="right", style="bold")
    table.add_column("vs spark_udf", justify="right")
    table.add_column("CPU-s per 1M rows", justify="right")
    table.add_column("vs spark_udf (CPU)", justify="right")
    table.add_column("note")
    for item in series:
        table.add_row(
            item.name,
            f"{item.results[0].rows:,}",
            f"{item.rows_per_s:,.0f}",
            item.spread,
            f"{item.rows_per_s / raw.rows_per_s:.0%}",
            f"{item.rows_per_s / udf.rows_per_s:.1f}x" if udf else "",
            f"{item.cpu_per_million:.1f}",
            f"{udf.cpu_per_million / item.cpu_per_million:.1f}x" if udf else "",
            item.note,
        )
    for rows, kib in sorted(peaks.items()) if len(peaks) > 1 else []:
        table.add_row(f"local engine, peak RSS at {rows:,} rows", "", "", "", "", "", "", "", f"{kib / 1024:,.0f} MiB")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows scored by every path")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the table shows medians)")
    parser.add_argument("--no-spark", action="store_true", help="skip the three Spark paths")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory run on 10x --rows")
    parser.add_argument("--keep", type=Path, help="keep the data and outputs in this directory")
    args = parser.parse_args()
    configure_logging("WARNING")
    warnings.filterwarnings("ignore")
    console = Console(width=None if sys.stdout.isatty() else 160)
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
            big = None if args.no_memory else write_rows(work / "data-10x.parquet", big_rows, seed=3)
        raw_default = Series("raw session.run, in-memory arrays", "2 threads (default: spinning), 10k-row batches")
        raw_quiet = Series("raw session.run, in-memory arrays", "2 threads, spinning off, 10k-row batches")
        compiled = Series(
            "raw compiled tree walk, in-memory arrays", "numba runtime, a thread per core, 10k-row batches"
        )
        local = Series("local engine, Parquet -> Parquet", "edgeloop score (runtime auto: the compiled tree walk)")
        local_ort = Series("local engine, --runtime onnxruntime", "edgeloop score, a session per core x 1 thread")
        sklearn = Series("sklearn predict_proba, pandas chunks", "10k-row chunks, n_jobs=-1")
        udf = Series("mlflow.pyfunc.spark_udf (sklearn), local[2]", "predict(): labels only; 10k-row Arrow batches")
        ours = Series("our Spark engine, Spark I/O (mapInArrow), local[2]", "spark_io=spark; 64k-row Arrow batches")
        direct = Series("our Spark engine, pyarrow I/O in tasks, local[2]", "spark_io=pyarrow; 64k-row batches")
        series = [raw_default, raw_quiet, compiled, local, local_ort, sklearn]
        peaks: dict[int, int] = {}
        spark = spark_model = None
        if not args.no_spark:
            import mlflow

            from cloud_sync.batch.spark_engine import spark_session

            with console.status("Spark: start and warm up"):
                spark = spark_session("local[2]", 65_536)
                mlflow.set_tracking_uri(tracking)
                spark_model = mlflow.pyfunc.spark_udf(spark, model_uri, result_type="double", env_manager="local")
                warm_up_spark(spark, spark_model, data, work)
                warm_up_ours(bundle, key, data, work)
            series += [udf, ours, direct]
        for round_ in range(1, args.rounds + 1):
            with console.status(f"round {round_}/{args.rounds}: raw onnxruntime"):
                raw_default.results.append(measured(lambda: raw_onnxruntime(bundle, data, spinning=True)))
                raw_quiet.results.append(measured(lambda: raw_onnxruntime(bundle, data, spinning=False)))
                compiled.results.append(measured(lambda: raw_compiled_walk(bundle, data)))
            with console.status(f"round {round_}/{args.rounds}: local engine"):
                before = cpu_seconds()
                result, peaks[args.rows] = local_engine(bundle, key, data, work / "local.parquet", home)
                local.results.append(replace(result, cpu=cpu_seconds() - before))
                before = cpu_seconds()
                result, _ = local_engine(bundle, key, data, work / "local-ort.parquet", home, "onnxruntime")
                local_ort.results.append(replace(result, cpu=cpu_seconds() - before))
            with console.status(f"round {round_}/{args.rounds}: sklearn"):
                sklearn.results.append(measured(lambda: sklearn_chunks(model_uri, tracking, data)))
            if spark is not None:
                with console.status(f"round {round_}/{args.rounds}: Spark, mlflow spark_udf"):
                    udf.results.append(measured(lambda: spark_udf(spark, spark_model, data, work / "udf.parquet")))
                with console.status(f"round {round_}/{args.rounds}: Spark, our engine, Spark I/O"):
                    ours.results.append(measured(lambda: spark_engine(bundle, key, data, work / "s1.parquet", "spark")))
                with console.status(f"round {round_}/{args.rounds}: Spark, our engine, pyarrow I/O"):
                    direct.results.append(
                        measured(lambda: spark_engine(bundle, key, data, work / "s2.parquet", "pyarrow"))
                    )
        if spark is not None:
            spark.stop()
        if big is not None:
            with console.status(f"local engine on {big_rows:,} rows (peak memory)"):
                big_local = Series(f"local engine, Parquet -> Parquet, {big_rows:,} rows", "peak memory run")
                before = cpu_seconds()
                result, peaks[big_rows] = local_engine(bundle, key, big, work / "local-10x.parquet", home)
                big_local.results.append(replace(result, cpu=cpu_seconds() - before))
            series.append(big_local)
    best_raw = max(raw_default, raw_quiet, key=lambda item: item.rows_per_s)
    has_spark = spark is not None
    console.print(render(series, best_raw, udf if has_spark else None, peaks, args.rounds))
    summary = [
        f"local engine / best raw onnxruntime: {local.rows_per_s / best_raw.rows_per_s:.0%} (goal >= 90 %)",
        f"local engine / sklearn: {local.rows_per_s / sklearn.rows_per_s:.2f}x (goal >= 1.5x)",
        f"local engine / raw compiled tree walk: {local.rows_per_s / compiled.rows_per_s:.0%}",
        f"local engine, --runtime onnxruntime / best raw: {local_ort.rows_per_s / best_raw.rows_per_s:.0%}",
    ]
    if has_spark:
        for item in (ours, direct):
            summary.append(
                f"{item.name} / spark_udf: {item.rows_per_s / udf.rows_per_s:.1f}x wall, "
                f"{udf.cpu_per_million / item.cpu_per_million:.1f}x CPU (goal >= 3x)"
            )
    if big_rows in peaks:
        summary.append(
            f"peak RSS at {big_rows:,} / {args.rows:,} rows: {peaks[big_rows] / peaks[args.rows]:.2f} (flat = 1)"
        )
    console.print("; ".join(summary))


if __name__ == "__main__":
    main()

"""The Spark engine: the same bundle and the same `score_batch` on Apache Spark, via `mapInArrow`.

The driver broadcasts the verified bundle's bytes (model.onnx, manifest, signature, public key); each
executor Python process verifies them once and keeps one onnxruntime session in a module-level dict keyed
by the model's sha256 (PySpark reuses its worker processes, so a session lives across tasks). pyspark is
imported lazily: the base install never needs it.

`spark_job` is the frame of a job (session, broadcast, job group, progress, one-line errors) shared with the
pyarrow I/O mode (`spark_direct.py`, `spark_io = "pyarrow"`), where the tasks read and write Parquet themselves.
Cluster use is documented in docs/batch-scoring.md (spark-submit, shipping the environment to executors).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from cloud_sync.batch.columns import ScoringPlan, check_schema, score_batch
from cloud_sync.batch.runtimes import LoadedRuntime, load_runtime
from contracts.bundle import Bundle, load_bundle
from contracts.errors import EdgeloopError, InputError, IntegrityError, ServiceUnavailableError
from contracts.logs import log_event
from contracts.manifest import MANIFEST_FILE, SIGNATURE_FILE, sha256_file
from contracts.runtime import OnnxModel
from contracts.signing import load_public_key

__all__ = ["executor_model", "score_spark", "spark_job", "spark_session"]

logger = logging.getLogger("edgeloop.batch")

_MODELS: dict[str, LoadedRuntime] = {}
"""Executor-side sessions, one per model sha256 per Python worker process."""
_MODELS_LOCK = threading.Lock()

_LOG4J = """\
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
logger.native.name = org.apache.hadoop.util.NativeCodeLoader
logger.native.level = error
"""
_LOG4J_QUIET = """\
# A failed task is reported by edgeloop as one line; the executor's stack traces would only repeat it.
logger.utils.name = org.apache.spark.util.Utils
logger.utils.level = off
logger.executor.name = org.apache.spark.executor.Executor
logger.executor.level = off
logger.tasks.name = org.apache.spark.scheduler.TaskSetManager
logger.tasks.level = off
logger.context.name = org.apache.spark.TaskContextImpl
logger.context.level = off
logger.writer.name = org.apache.spark.sql.execution.datasources.FileFormatWriter
logger.writer.level = off
"""


def spark_session(master: str, batch_rows: int, ui: bool = False, log_level: str = "WARN") -> Any:
    """Return the active SparkSession (spark-submit, a notebook, a test) or start a quiet one on `master`.

    Raises a one-line ServiceUnavailableError when pyspark or Java is missing.
    """
    try:
        import pyspark  # noqa: F401
        from pyspark.sql import SparkSession
    except ImportError:
        raise ServiceUnavailableError(
            "the Spark engine needs pyspark: pip install 'edgeloop[spark]' (or use --engine local)"
        ) from None
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyspark\..*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pyspark\..*")
    active = SparkSession.getActiveSession()
    if active is None:
        java_home = os.environ.get("JAVA_HOME")
        if not shutil.which("java") and not (java_home and Path(java_home, "bin", "java").exists()):
            raise ServiceUnavailableError(
                "the Spark engine needs Java 17 or newer: java is not on PATH and JAVA_HOME is not set"
            )
        submitted = bool(os.environ.get("PYSPARK_GATEWAY_PORT"))  # spark-submit started the JVM already
        if master.startswith("local") and not submitted:
            # Workers must run this interpreter (it has onnxruntime); bind to loopback to skip the host lookup.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        log4j = Path(tempfile.gettempdir()) / f"edgeloop-log4j2-{log_level.lower()}.properties"
        quiet = log_level.upper() in ("WARN", "ERROR", "FATAL", "OFF")
        log4j.write_text(_LOG4J.format(level=log_level.lower()) + (_LOG4J_QUIET if quiet else ""))
        builder = SparkSession.builder.appName("edgeloop-score")
        if not submitted:  # under spark-submit, its --master and --conf rule
            builder = (
                builder.master(master)
                .config("spark.ui.enabled", "true" if ui else "false")
                .config("spark.ui.showConsoleProgress", "false")
                .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{log4j}")
            )
        try:
            active = builder.getOrCreate()
        except Exception as exc:  # PySparkRuntimeError when the JVM cannot start, with a long story
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServiceUnavailableError(f"cannot start Spark on {master}: {first}") from None
        active.sparkContext.setLogLevel(log_level.upper())
    active.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    return active


def _model_key(payload: dict[str, Any]) -> str:
    """Python workers outlive jobs: a model is reused by a later job of the same model.onnx, runtime and threads."""
    return f"{payload['sha256']}/{payload['runtime']}/{payload['threads']}"


def executor_runtime(payload: dict[str, Any]) -> LoadedRuntime:
    """The executor's models for the broadcast bundle, created (and the bundle verified) once per Python process;
    the compiled tree walk is not yet checked against onnxruntime (`executor_model` does that)."""
    key = _model_key(payload)
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is None:
            with tempfile.TemporaryDirectory(prefix="edgeloop-bundle-") as scratch:
                folder = Path(scratch)
                for name, data in payload["files"].items():
                    (folder / name).write_bytes(data)
                public_key = None
                if payload["public_key"] is not None:
                    (folder / "signing.pub").write_bytes(payload["public_key"])
                    public_key = load_public_key(folder / "signing.pub")
                bundle = load_bundle(folder, public_key)
                loaded = load_runtime(bundle, 1, payload["runtime"], threads=payload["threads"])
            _MODELS[key] = loaded
    return loaded


def executor_model(payload: dict[str, Any], plan: ScoringPlan, batch: pa.RecordBatch) -> OnnxModel:
    """The model that scores `batch` in this executor process: the first batch a process scores checks the
    compiled tree walk against onnxruntime (cloud_sync/batch/runtimes.py), once per process."""
    loaded = executor_runtime(payload)
    if loaded.reference is not None:
        with _MODELS_LOCK:
            loaded = _MODELS[_model_key(payload)]
            if loaded.reference is not None:
                loaded = loaded.checked(plan, batch)
                _MODELS[_model_key(payload)] = loaded
                log_event(logger, "executor runtime", runtime=loaded.runtime, verified_rows=loaded.verified_rows)
    return loaded.models[0]


def _payload(bundle: Bundle, public_key_path: Path, threads: int, runtime: str) -> dict[str, Any]:
    files = {}
    for name in (bundle.manifest.onnx.file, MANIFEST_FILE, SIGNATURE_FILE):
        path = bundle.path / name
        if path.is_file():
            files[name] = path.read_bytes()
    if sha256_file(bundle.model_path) != bundle.manifest.onnx.sha256:
        raise IntegrityError(f"{bundle.model_path} changed after it was verified")
    return {
        "sha256": bundle.manifest.onnx.sha256,
        "files": files,
        "public_key": public_key_path.read_bytes() if bundle.signed else None,
        "threads": threads,
        "runtime": runtime,
    }


def _scorer(broadcast: Any, counter: Any) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        manifest = executor_runtime(broadcast.value).bundle.manifest
        plan: ScoringPlan | None = None
        for batch in batches:
            if plan is None:  # passthrough types exactly as Spark sends them
                plan = check_schema(batch.schema, manifest, "the Spark partition")
            if batch.num_rows:
                yield score_batch(executor_model(broadcast.value, plan, batch), plan, batch)
                counter.add(batch.num_rows)

    return score_partition


def _features_as_float(frame: Any, bundle: Bundle) -> Any:
    """Cast numeric features to float32 in the JVM: the model reads float32 anyway (the cast rounds the same
    way as Arrow's), and it halves what crosses to Python. Passthrough columns are left untouched."""
    from pyspark.sql.functions import col

    numeric = {spec.name for spec in bundle.manifest.inputs if spec.kind == "numeric"}
    return frame.select(
        *[col(name).cast("float").alias(name) if name in numeric else col(name) for name in frame.columns]
    )


def _spark_type(kind: pa.DataType) -> Any:
    from pyspark.sql.types import FloatType, LongType, StringType

    if pa.types.is_string(kind):
        return StringType()
    if pa.types.is_int64(kind):
        return LongType()
    if pa.types.is_float32(kind):
        return FloatType()
    raise InputError(f"no Spark type for {kind}")


class _TaskProgress(threading.Thread):
    """Polls Spark's status tracker for the job group and reports finished/total tasks."""

    def __init__(self, spark: Any, group: str, report: Callable[[int, int | None, str], None]) -> None:
        super().__init__(name="edgeloop-spark-progress", daemon=True)
        self.tracker = spark.sparkContext.statusTracker()
        self.group, self.report = group, report
        self.stopped = threading.Event()

    def poll(self) -> None:
        done = total = 0
        for job_id in self.tracker.getJobIdsForGroup(self.group):
            job = self.tracker.getJobInfo(job_id)
            for stage_id in job.stageIds if job else []:
                stage = self.tracker.getStageInfo(stage_id)
                if stage is not None:
                    done, total = done + stage.numCompletedTasks, total + stage.numTasks
        if total:
            self.report(done, total, "tasks")

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            try:
                self.poll()
            except Exception:  # a status poll must never break the job
                return


def _read(spark: Any, location: str, input_format: str, arrow_schema: pa.Schema | None) -> Any:
    if input_format == "csv":
        from pyspark.sql.pandas.types import from_arrow_schema

        schema = from_arrow_schema(arrow_schema) if arrow_schema is not None else None
        reader = spark.read.option("header", "true").option("mode", "FAILFAST")
        return reader.csv(location, schema=schema) if schema is not None else reader.csv(location, inferSchema=True)
    return spark.read.parquet(location)


@contextlib.contextmanager
def spark_job(
    bundle: Bundle,
    public_key_path: Path,
    master: str,
    batch_rows: int,
    ui: bool = False,
    log_level: str = "WARN",
    on_progress: Callable[[int, int | None, str], None] | None = None,
    io: str = "spark",
    runtime: str = "auto",
) -> Iterator[tuple[Any, Any]]:
    """The frame of one scoring job, shared by both Spark I/O modes: yield (spark session, broadcast bundle).

    Runs the job in its own job group with task progress; turns any Spark failure into one line; stops the
    session afterwards unless it was running before (spark-submit, a notebook, a test).
    """
    already_running = _spark_running()
    spark = spark_session(master, batch_rows, ui, log_level)
    try:
        threads = int(spark.conf.get("spark.task.cpus", "1"))
        broadcast = spark.sparkContext.broadcast(_payload(bundle, public_key_path, threads, runtime))
        group = f"edgeloop-score-{uuid.uuid4().hex[:8]}"
        spark.sparkContext.setJobGroup(group, f"edgeloop score {bundle.manifest.ref}")
        log_event(
            logger, "spark engine started", master=spark.sparkContext.master, io=io, threads=threads, runtime=runtime
        )
        progress = _TaskProgress(spark, group, on_progress) if on_progress else None
        if progress:
            progress.start()
        try:
            yield spark, broadcast
        finally:
            if progress:
                progress.stopped.set()
                progress.join()
                progress.poll()
            broadcast.unpersist()
    except EdgeloopError:
        raise
    except Exception as exc:
        raise _spark_error(exc) from None
    finally:
        if not already_running:
            spark.stop()


def score_spark(
    bundle: Bundle,
    public_key_path: Path,
    input_location: str,
    input_format: str,
    arrow_schema: pa.Schema | None,
    output_location: str,
    master: str,
    batch_rows: int,
    compression: str = "snappy",
    ui: bool = False,
    log_level: str = "WARN",
    on_progress: Callable[[int, int | None, str], None] | None = None,
    runtime: str = "auto",
) -> tuple[int, str]:
    """Score the input with Spark into the Parquet directory `output_location`; return the rows written and
    the master the job ran on.

    `output_location` is written as is (the caller stages a local path and renames it into place).
    """
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructField, StructType

    with spark_job(bundle, public_key_path, master, batch_rows, ui, log_level, on_progress, runtime=runtime) as (
        spark,
        broadcast,
    ):
        frame = _read(spark, input_location, input_format, arrow_schema)
        plan = check_schema(to_arrow_schema(frame.schema), bundle.manifest, input_location)
        frame = _features_as_float(frame, bundle)
        fields = [frame.schema[name] for name in plan.passthrough]
        fields.extend(StructField(f.name, _spark_type(f.type), True) for f in plan.prediction_fields)
        # A file of a few large row groups would otherwise become as many tasks as cores: no balance at the
        # end of the job and a progress bar that moves twice. Four splits per core (while a split stays at
        # least one row group) fixes both; a value the user set is kept.
        split_key = "spark.sql.files.minPartitionNum"
        user_splits = spark.conf.get(split_key, None)
        if user_splits is None:
            spark.conf.set(split_key, str(4 * spark.sparkContext.defaultParallelism))
        try:
            # Updates from the tasks of an action are applied once per task, even when a task is retried.
            counter = spark.sparkContext.accumulator(0)
            scored = frame.mapInArrow(_scorer(broadcast, counter), StructType(fields))
            scored.write.mode("overwrite").option("compression", compression).parquet(output_location)
        finally:
            if user_splits is None:
                spark.conf.unset(split_key)
        return int(counter.value), str(spark.sparkContext.master)


def _spark_running() -> bool:
    from pyspark import SparkContext

    return SparkContext._active_spark_context is not None


def _spark_error(exc: BaseException) -> EdgeloopError:
    """One line from a Spark failure (a Py4J error is a JVM stack trace thousands of characters long): the
    edgeloop error raised on an executor when there is one, else the innermost Spark exception's message."""
    text = str(exc)
    for line in text.splitlines():
        for name in ("SchemaError", "InputError", "IntegrityError", "ModelRejected"):
            marker = f"contracts.errors.{name}: "
            if marker in line:
                message = line.split(marker, 1)[1].strip()
                return IntegrityError(message) if name == "IntegrityError" else InputError(message)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("at ")]
    causes = [line.split(": ", 1)[1] for line in lines if line.startswith("Caused by: ") and ": " in line[11:]]
    for line in lines:
        if "Exception: " in line and not line.startswith("Caused by"):
            message = line.rsplit("Exception: ", 1)[1]
            message = re.sub(r"^\[[A-Z_.]+\]\s*", "", message)
            message = re.sub(r"\s*SQLSTATE: \w+\s*$", "", message).strip()
            if message:
                cause = causes[-1].split(": ", 1)[-1].strip() if causes else ""
                if cause and cause not in message:
                    message = f"{message} (caused by: {cause})"
                return InputError(f"the Spark job failed: {message}")
    return InputError(f"the Spark job failed: {lines[0] if lines else type(exc).__name__}")

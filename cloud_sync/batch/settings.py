"""Batch scoring settings (env prefix EDGELOOP_SCORE_, config file table [score]).

Precedence: defaults < config file < environment < `edgeloop score` flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from contracts.settings import EdgeloopSettings, edgeloop_home
from contracts.tracking import resolve_tracking_uri

__all__ = ["ScoreSettings", "default_tracking_uri"]


def default_tracking_uri() -> str:
    """The registry `edgeloop train` and `edgeloop convert` use (contracts.tracking: EDGELOOP_TRACKING_URI, the
    [train] table, MLFLOW_TRACKING_URI, else sqlite in $EDGELOOP_HOME)."""
    return resolve_tracking_uri()


class ScoreSettings(EdgeloopSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_SCORE_", extra="ignore", use_attribute_docstrings=True)
    config_section: ClassVar[str] = "score"

    engine: Literal["local", "spark"] = "local"
    """Where to score: `local` streams Parquet/CSV through this process (see `runtime`); `spark` runs the same
    bundle on Apache Spark (needs the `spark` extra and Java)."""
    batch_rows: int = Field(default=65_536, ge=1)
    """Rows per record batch fed to onnxruntime (local engine) or per Arrow batch (Spark engine). Memory grows
    with it; 64k rows keeps onnxruntime's per-call overhead below 1 %."""
    threads: int = Field(default=0, ge=0)
    """Scoring workers of the local engine (onnxruntime sessions with one intra-op thread each, or threads of
    the compiled tree walk), scoring batches in parallel; 0 = one per core this process may run on."""
    runtime: Literal["auto", "onnxruntime", "numba"] = "auto"
    """What evaluates model.onnx (local engine and Spark executors): `onnxruntime`; `numba` = the numpy runtime
    with its tree ensembles compiled by numba (2-3x less CPU per row on forests; checked against onnxruntime
    on the first rows of every job, and of every Spark executor process); `auto` = numba when it is
    installed and the model has a tree ensemble, else onnxruntime (docs/batch-scoring.md)."""
    tracking_uri: str | None = None
    """MLflow tracking URI used to resolve NAME@ALIAS and to record a lineage run in experiment
    `edgeloop-batch-scoring`. Unset: models resolve from the trainer's store ($EDGELOOP_TRACKING_URI,
    $MLFLOW_TRACKING_URI, else sqlite in $EDGELOOP_HOME) and a lineage run is recorded only when the model came
    from a registry."""
    public_key: Path = Field(default_factory=lambda: edgeloop_home() / "keys" / "edgeloop-signing.pub")
    """Ed25519 public key every bundle's signature is verified with before a row is scored."""
    cache_dir: Path = Field(default_factory=lambda: edgeloop_home() / "cache" / "bundles")
    """Where bundles resolved through the registry are downloaded (one directory per name and version)."""
    experiment: str = "edgeloop-batch-scoring"
    """MLflow experiment that receives one run per scoring job (params, metrics, tags)."""
    compression: Literal["snappy", "zstd", "gzip", "lz4", "none"] = "snappy"
    """Parquet compression codec of the output."""
    master: str = "local[2]"
    """Spark master URL for `--engine spark` (local[N], spark://host:7077, yarn, k8s://...). Ignored when the
    job is started with spark-submit, which has already chosen the master."""
    spark_io: Literal["auto", "spark", "pyarrow"] = "auto"
    """How the Spark engine reads and writes: `pyarrow` = Spark only schedules the tasks, each task reads its
    row groups and writes its part file with pyarrow (the rows never enter the JVM: faster, see
    docs/batch-scoring.md; input and output must be paths every executor and the driver see: a local or
    shared file system); `spark` = Spark's own readers and writer (any location Spark can read, hdfs://,
    s3a://...; rows cross JVM <-> Python as Arrow); `auto` = pyarrow when input and output are paths, spark
    (with the reason logged) when either is a URI."""
    spark_ui: bool = False
    """Start the Spark web UI (port 4040) during a Spark job; off by default to keep scoring quiet."""
    spark_log_level: str = "WARN"
    """Log level of Spark's JVM during a Spark job (ERROR, WARN, INFO, ...)."""

"""Lineage of a scoring job: which bundle scored which input into which output, how many rows, how fast.

Written as a JSON sidecar `<output>.lineage.json` and, when a tracking store is in use, as an MLflow run in
the experiment `edgeloop-batch-scoring` (params, metrics, tags, and the sidecar as an artifact).
"""

from __future__ import annotations

import logging
import platform
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cloud_sync.batch.models import ResolvedBundle
from cloud_sync.batch.output import write_json_atomic
from contracts.logs import log_event
from contracts.settings import edgeloop_home

__all__ = ["LINEAGE_SCHEMA", "JobRecord", "lineage_path", "record_lineage"]

logger = logging.getLogger("edgeloop.batch")
LINEAGE_SCHEMA = "edgeloop.batch-lineage/v1"


@dataclass
class JobRecord:
    resolved: ResolvedBundle
    input_path: str
    input_format: str
    output_path: str
    engine: str
    engine_options: dict[str, Any]
    started_at: datetime
    finished_at: datetime
    duration_s: float = 0.0
    input_rows: int = 0
    output_rows: int = 0
    mlflow_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.output_rows / self.duration_s if self.duration_s > 0 else 0.0

    def document(self) -> dict[str, Any]:
        manifest = self.resolved.bundle.manifest
        return {
            "schema": LINEAGE_SCHEMA,
            "model": {
                "reference": self.resolved.reference,
                "name": manifest.name,
                "version": manifest.version,
                "bundle_sha256": self.resolved.digest,
                "onnx_sha256": manifest.onnx.sha256,
                "bundle_path": str(self.resolved.bundle.path),
                "training_run_id": manifest.lineage.run_id,
                "registry": self.resolved.tracking_uri,
            },
            "input": {"path": str(self.input_path), "format": self.input_format, "rows": self.input_rows},
            "output": {"path": str(self.output_path), "format": "parquet", "rows": self.output_rows},
            "engine": {"name": self.engine, **self.engine_options},
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "finished_at": self.finished_at.isoformat(timespec="seconds"),
            "duration_s": round(self.duration_s, 3),
            "rows_per_s": round(self.rows_per_s, 1),
            "host": platform.node(),
            "mlflow_run_id": self.mlflow_run_id,
            **self.extra,
        }


def lineage_path(output: str | Path) -> Path:
    """`<output>.lineage.json`, beside the output."""
    path = Path(str(output).removeprefix("file://"))
    return path.with_name(path.name + ".lineage.json")


def _experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    if tracking_uri.startswith("sqlite:"):
        root = edgeloop_home() / "mlartifacts"
        root.mkdir(parents=True, exist_ok=True)
        location = root.resolve().as_uri() + f"/{name}"
    return str(client.create_experiment(name, artifact_location=location))


def _log_run(record: JobRecord, tracking_uri: str, experiment: str) -> str:
    from mlflow.tracking import MlflowClient

    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\..*")
    client = MlflowClient(tracking_uri)
    manifest = record.resolved.bundle.manifest
    run = client.create_run(
        _experiment_id(client, experiment, tracking_uri),
        run_name=f"score {manifest.name} v{manifest.version} ({record.engine})",
        tags={
            "edgeloop.model_name": manifest.name,
            "edgeloop.model_version": str(manifest.version),
            "edgeloop.bundle_sha256": record.resolved.digest,
            "edgeloop.training_run_id": manifest.lineage.run_id,
        },
    )
    run_id: str = run.info.run_id
    params = {
        "model": record.resolved.reference,
        "model_name": manifest.name,
        "model_version": manifest.version,
        "bundle_sha256": record.resolved.digest,
        "input": str(record.input_path),
        "input_format": record.input_format,
        "output": str(record.output_path),
        "engine": record.engine,
        **{f"engine.{key}": value for key, value in record.engine_options.items()},
    }
    for key, value in params.items():
        client.log_param(run_id, key, str(value)[:6000])
    for key, value in (
        ("input_rows", record.input_rows),
        ("output_rows", record.output_rows),
        ("duration_s", record.duration_s),
        ("rows_per_s", record.rows_per_s),
    ):
        client.log_metric(run_id, key, float(value))
    record.mlflow_run_id = run_id
    client.log_dict(run_id, record.document(), "lineage.json")
    client.set_terminated(run_id)
    return run_id


def record_lineage(
    record: JobRecord, tracking_uri: str | None, experiment: str, write_sidecar: bool = True
) -> Path | None:
    """Log the MLflow run (when `tracking_uri` is set) and write the sidecar; return the sidecar's path.

    The output is already published when this runs, so a tracking failure is logged, not raised.
    """
    if tracking_uri:
        try:
            _log_run(record, tracking_uri, experiment)
        except Exception as exc:  # the job's output stands; losing the run must not fail it
            log_event(
                logger,
                "lineage run not recorded",
                level=logging.WARNING,
                tracking_uri=tracking_uri,
                error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
    if not write_sidecar:
        return None
    sidecar = lineage_path(record.output_path)
    write_json_atomic(sidecar, record.document())
    return sidecar

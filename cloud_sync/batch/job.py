"""One scoring job end to end: resolve and verify the bundle, open the input and check its schema against the
manifest (every user error surfaces here, before any work), run the chosen engine into a staged output,
publish it, and record the lineage.

    result = score("machine-failure@champion", "data.parquet", "out.parquet", ScoreSettings())
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cloud_sync.batch.columns import check_schema
from cloud_sync.batch.inputs import InputTable, open_input
from cloud_sync.batch.lineage import JobRecord, record_lineage
from cloud_sync.batch.local_engine import available_cores, score_local
from cloud_sync.batch.models import ResolvedBundle, resolve_bundle
from cloud_sync.batch.output import check_output, staged_output
from cloud_sync.batch.runtimes import LoadedRuntime
from cloud_sync.batch.settings import ScoreSettings
from contracts.errors import InputError
from contracts.logs import log_event
from contracts.tracking import ensure_tracking_reachable

__all__ = ["ProgressCallback", "ScoreResult", "score", "spark_io_for"]

logger = logging.getLogger("edgeloop.batch")

ProgressCallback = Callable[[int, "int | None", str], None]
"""Called with (done, total or None, unit): rows for the local engine, tasks for the Spark engine."""


@dataclass(frozen=True)
class ScoreResult:
    resolved: ResolvedBundle
    output: str
    rows: int
    duration_s: float
    engine: str
    lineage: Path | None
    mlflow_run_id: str | None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.duration_s if self.duration_s > 0 else 0.0


def _is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def spark_io_for(setting: str, source: str, target: str) -> str:
    """The Spark engine's I/O mode: `auto` is pyarrow (faster: the rows never enter the JVM) when input and
    output are paths, else spark, with the reason logged; an explicit `pyarrow` with a URI is an error."""
    uri = next((location for location in (source, target) if _is_remote(location)), None)
    if setting == "pyarrow" and uri is not None:
        raise InputError("spark_io=pyarrow reads and writes paths on a shared file system; use spark_io=spark for URIs")
    if setting != "auto":
        return setting
    if uri is None:
        return "pyarrow"
    log_event(
        logger,
        "Spark I/O chosen",
        io="spark",
        reason=f"{uri} is a URI: pyarrow I/O needs paths that every executor and the driver see, so Spark reads "
        "and writes",
    )
    return "spark"


def score(
    model: str,
    input_location: str | Path,
    output_location: str | Path,
    settings: ScoreSettings | None = None,
    on_progress: ProgressCallback | None = None,
) -> ScoreResult:
    """Score `input_location` with `model` into the Parquet `output_location`; see the module docstring."""
    settings = settings or ScoreSettings()
    source, target = str(input_location), str(output_location)
    remote = _is_remote(source) or _is_remote(target)
    if remote and settings.engine != "spark":
        raise InputError("the local engine reads and writes local paths; use --engine spark for URIs")
    spark_io = spark_io_for(settings.spark_io, source, target) if settings.engine == "spark" else settings.spark_io
    direct = settings.engine == "spark" and spark_io == "pyarrow"
    resolved = resolve_bundle(model, settings)
    manifest = resolved.bundle.manifest
    input_format, arrow_schema, total = "parquet", None, None
    table: InputTable | None = None
    if not _is_remote(source):
        table = open_input(Path(source.removeprefix("file://")), manifest)
        plan = check_schema(table.schema, manifest, source)
        input_format, arrow_schema, total = table.format, table.schema, table.rows
    if not _is_remote(target):
        check_output(Path(target.removeprefix("file://")), Path(source.removeprefix("file://")))
    lineage_uri = settings.tracking_uri or resolved.tracking_uri
    if settings.tracking_uri and not resolved.tracking_uri:
        ensure_tracking_reachable(settings.tracking_uri)
    started_at, started = datetime.now(UTC), time.perf_counter()
    if settings.engine == "local":
        assert table is not None  # remote locations were refused above
        done = 0

        def advance(rows: int) -> None:
            nonlocal done
            done += rows
            if on_progress is not None:
                on_progress(done, total, "rows")

        sessions = settings.threads or available_cores()
        chosen: list[LoadedRuntime] = []
        rows = score_local(
            resolved.bundle,
            table,
            plan,
            Path(target.removeprefix("file://")),
            settings.batch_rows,
            sessions=sessions,
            runtime=settings.runtime,
            compression=settings.compression,
            on_batch=advance,
            on_runtime=chosen.append,
        )
        options: dict[str, object] = {"threads": sessions, "sessions": sessions, "batch_rows": settings.batch_rows}
        if chosen:  # absent only for an input without rows
            options |= {
                "runtime": chosen[0].runtime,
                "runtime_reason": chosen[0].reason,
                "verified_rows": chosen[0].verified_rows,
            }
    else:
        from cloud_sync.batch.spark_engine import score_spark

        def run_spark(location: str) -> tuple[int, str]:
            if direct:
                from cloud_sync.batch.spark_direct import score_spark_direct

                assert table is not None  # remote locations were refused above
                return score_spark_direct(
                    resolved.bundle,
                    settings.public_key,
                    table,
                    Path(location),
                    settings.master,
                    settings.batch_rows,
                    settings.compression,
                    settings.spark_ui,
                    settings.spark_log_level,
                    on_progress,
                    settings.runtime,
                )
            return score_spark(
                resolved.bundle,
                settings.public_key,
                source,
                input_format,
                arrow_schema,
                location,
                settings.master,
                settings.batch_rows,
                settings.compression,
                settings.spark_ui,
                settings.spark_log_level,
                on_progress,
                settings.runtime,
            )

        if _is_remote(target):
            rows, master = run_spark(target)
        else:
            with staged_output(Path(target.removeprefix("file://"))) as staged:
                rows, master = run_spark(str(staged))
        options = {"master": master, "batch_rows": settings.batch_rows, "io": spark_io, "runtime": settings.runtime}
    duration = time.perf_counter() - started
    record = JobRecord(
        resolved=resolved,
        input_path=source if _is_remote(source) else str(Path(source.removeprefix("file://")).resolve()),
        input_format=input_format,
        output_path=target if _is_remote(target) else str(Path(target.removeprefix("file://")).resolve()),
        engine=settings.engine,
        engine_options=options,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        duration_s=duration,
        input_rows=rows,
        output_rows=rows,
    )
    sidecar = record_lineage(record, lineage_uri, settings.experiment, write_sidecar=not _is_remote(target))
    log_event(
        logger,
        "scoring finished",
        model=manifest.ref,
        engine=settings.engine,
        rows=rows,
        seconds=round(duration, 2),
        rows_per_s=round(record.rows_per_s),
        output=target,
    )
    return ScoreResult(resolved, target, rows, duration, settings.engine, sidecar, record.mlflow_run_id)

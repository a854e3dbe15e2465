"""The local engine: stream record batches from Parquet or CSV through onnxruntime in this process and write
Parquet incrementally. Memory is bounded by the batch and row-group size, whatever the input's size.

Reading (Arrow's scanner threads, a little readahead), inference (onnxruntime's intra-op threads) and writing
(a writer thread) overlap; all three release the GIL. The output is built beside the final path and renamed
into place at the end.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cloud_sync.batch.columns import ScoringPlan, score_batch
from cloud_sync.batch.inputs import InputTable
from cloud_sync.batch.output import staged_output
from contracts.bundle import Bundle
from contracts.logs import log_event
from contracts.runtime import OnnxModel

__all__ = ["available_cores", "score_local"]

logger = logging.getLogger("edgeloop.batch")
_DONE = object()


def available_cores() -> int:
    """Cores this process may run on (cgroup/affinity aware where the platform tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Writer(threading.Thread):
    """Writes batches from a small queue, so that encoding and compressing Parquet overlaps inference."""

    def __init__(self, path: Path, schema: pa.Schema, compression: str) -> None:
        super().__init__(name="edgeloop-parquet-writer", daemon=True)
        self.queue: queue.Queue[object] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self._writer = pq.ParquetWriter(path, schema, compression=compression)

    def run(self) -> None:
        try:
            while (item := self.queue.get()) is not _DONE:
                if self.error is None:
                    self._writer.write_batch(item)
        except BaseException as exc:  # surfaced in the main thread by put()/finish()
            self.error = exc
            while self.queue.get() is not _DONE:
                pass
        finally:
            self._writer.close()

    def put(self, batch: pa.RecordBatch) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(batch)

    def abort(self) -> None:
        """Stop after a failure elsewhere; the partial file is removed by the caller."""
        self.error = self.error or RuntimeError("aborted")
        self.queue.put(_DONE)
        self.join()

    def finish(self) -> None:
        self.queue.put(_DONE)
        self.join()
        if self.error is not None:
            raise self.error


def score_local(
    bundle: Bundle,
    table: InputTable,
    plan: ScoringPlan,
    output: Path,
    batch_rows: int,
    threads: int = 0,
    compression: str = "snappy",
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Score `table` into the Parquet file `output`; return the number of rows scored."""
    threads = threads or available_cores()
    model = OnnxModel.load(bundle, intra_op_threads=threads, inter_op_threads=1)
    log_event(logger, "local engine started", threads=threads, batch_rows=batch_rows, input=str(table.path))
    rows = 0
    with staged_output(output) as tmp:
        writer = _Writer(tmp, plan.output_schema, compression)
        writer.start()
        try:
            for batch in table.batches(batch_rows):
                if batch.num_rows == 0:
                    continue
                writer.put(score_batch(model, plan, batch))
                rows += batch.num_rows
                if on_batch is not None:
                    on_batch(batch.num_rows)
        except BaseException:
            writer.abort()
            raise
        writer.finish()
    return rows

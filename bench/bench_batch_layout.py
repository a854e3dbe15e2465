"""The local engine's layout: one session per core in threads (what `edgeloop score` runs) or in processes.

    .venv/bin/python bench/bench_batch_layout.py              # 1M rows, 3 interleaved rounds
    .venv/bin/python bench/bench_batch_layout.py --rows 200000 --rounds 2

Same forest, same data and same bundle as bench/bench_batch.py (trained, converted and signed the real way).
Both layouts score a Parquet file into one Parquet file in input order, Parquet -> Parquet, with one
onnxruntime session per core and one intra-op thread per session:

- threads: the local engine itself (`cloud_sync.batch.local_engine.score_local`): a reader thread, one worker
  thread per session (`pipeline.ScoringPool`), a writer thread;
- processes: a `multiprocessing` pool (fork), one session per worker process created once; each task reads
  one row group itself, scores it with the same `score_batch`, and sends the scored row group back as an
  Arrow IPC stream; the parent writes the row groups in order with the same writer, at most two tasks per
  worker in flight.

Reported: rows/s (wall) and CPU seconds per 1M rows of the whole process tree, medians of interleaved rounds.
Not a test: figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import deque
from multiprocessing.pool import AsyncResult
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from bench_batch import cpu_seconds, train_and_convert, write_rows  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from cloud_sync.batch.columns import ScoringPlan, check_schema, score_batch  # noqa: E402
from cloud_sync.batch.inputs import open_input  # noqa: E402
from cloud_sync.batch.local_engine import ParquetBatchWriter, available_cores, score_local  # noqa: E402
from contracts.bundle import load_bundle  # noqa: E402
from contracts.logs import configure_logging  # noqa: E402
from contracts.runtime import OnnxModel  # noqa: E402

BATCH_ROWS = 65_536
_worker: tuple[OnnxModel, ScoringPlan] | None = None


def _start_worker(bundle: str, data: str) -> None:
    global _worker
    loaded = load_bundle(Path(bundle))
    _worker = (
        OnnxModel.load(loaded, 1, runtime="onnxruntime"),
        check_schema(pq.read_schema(data), loaded.manifest, data),
    )


def _score_row_group(data: str, group: int) -> bytes:
    assert _worker is not None
    model, plan = _worker
    source = pq.ParquetFile(data, pre_buffer=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, plan.output_schema) as stream:
        for batch in source.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], use_threads=False):
            stream.write_batch(score_batch(model, plan, batch))
    return sink.getvalue().to_pybytes()


def processes(bundle: Path, data: Path, out: Path, workers: int) -> int:
    plan = check_schema(pq.read_schema(data), load_bundle(bundle).manifest, str(data))
    groups = pq.ParquetFile(data).metadata.num_row_groups
    writer = ParquetBatchWriter(out, plan.output_schema, "snappy")
    writer.start()
    rows = 0
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_start_worker, initargs=(str(bundle), str(data))) as pool:
        pending: deque[AsyncResult[bytes]] = deque()
        for group in range(groups):
            pending.append(pool.apply_async(_score_row_group, (str(data), group)))
            while len(pending) >= 2 * workers or (group == groups - 1 and pending):
                for batch in pa.ipc.open_stream(pending.popleft().get()):
                    writer.put(batch)
                    rows += batch.num_rows
    writer.finish()
    return rows


def threads(bundle: Path, data: Path, out: Path, workers: int) -> int:
    loaded = load_bundle(bundle)
    table = open_input(data, loaded.manifest)
    plan = check_schema(table.schema, loaded.manifest, str(data))
    return score_local(loaded, table, plan, out, BATCH_ROWS, sessions=workers, runtime="onnxruntime")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows scored by each layout")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the table shows medians)")
    args = parser.parse_args()
    configure_logging("WARNING")
    warnings.filterwarnings("ignore")
    console = Console(width=None if sys.stdout.isatty() else 140)
    workers = available_cores()
    results: dict[str, list[tuple[float, float]]] = {"threads": [], "processes": []}
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-layout-") as tmp:
        work = Path(tmp)
        os.environ["EDGELOOP_HOME"] = str(work / "home")
        with console.status("training and converting the forest, writing the data"):
            bundle, _, _, _ = train_and_convert(work)
            data = write_rows(work / "data.parquet", args.rows, seed=2)
        for round_ in range(1, args.rounds + 1):
            for name, layout in (("threads", threads), ("processes", processes)):
                with console.status(f"round {round_}/{args.rounds}: {name}"):
                    out = work / f"{name}.parquet"
                    before_cpu, started = cpu_seconds(), time.perf_counter()
                    rows = layout(bundle, data, out, workers)
                    seconds, cpu = time.perf_counter() - started, cpu_seconds() - before_cpu
                    assert rows == args.rows and pq.read_metadata(out).num_rows == rows
                    results[name].append((rows / seconds, cpu / rows * 1e6))
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    table = Table(
        title=f"local engine layouts, {args.rows:,} rows, {workers} sessions x 1 thread, "
        f"median of {args.rounds} interleaved rounds ({os.cpu_count()} cores, load avg {load})"
    )
    for column in ("layout", "rows/s (median)", "range", "CPU-s per 1M rows"):
        table.add_column(column, justify="left" if column == "layout" else "right")
    for name, values in results.items():
        speeds = [speed for speed, _ in values]
        table.add_row(
            name,
            f"{statistics.median(speeds):,.0f}",
            f"{min(speeds):,.0f}-{max(speeds):,.0f}",
            f"{statistics.median(cpu for _, cpu in values):.1f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()

"""How fast can the same bundle's forest be evaluated? CPU seconds per 1M rows of one call path at a time.

    .venv/bin/python bench/bench_tree_eval.py                       # trains the bench forest (~1.5 min)
    .venv/bin/python bench/bench_tree_eval.py --bundle DIR --rows 200000

The Spark engine's goal of 3x `spark_udf` needs about 20 / 3 = 6.7 CPU-s per 1M rows for the whole job; this
measures whether any evaluation of the same `model.onnx` (the forest of bench/bench_batch.py: 100 trees of
depth 10 on 20 float features) costs less than onnxruntime's default: the batch width per `session.run`,
onnxruntime's graph optimisation level, one session with 2 intra-op threads, and the numpy runtime of
`contracts` (issue 16, level-synchronous trees over all (row, tree) pairs) on wide batches, and the same walk
compiled by numba (the batch runtime `numba`, contracts/compiled_trees.py). Each variant
runs the same in-memory float32 rows (after a warm-up call) in interleaved rounds; the table shows the median
CPU seconds per 1M rows of this process (`time.process_time`), which a shared machine disturbs much less
than wall time. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from bench_batch import FEATURES, make_rows, train_and_convert  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from contracts.bundle import Bundle, load_bundle  # noqa: E402
from contracts.logs import configure_logging  # noqa: E402
from contracts.runtime import OnnxModel  # noqa: E402
from contracts.runtime_numpy import NumpySession  # noqa: E402

Feed = dict[str, np.ndarray]


def session(bundle: Bundle, threads: int, level: ort.GraphOptimizationLevel) -> OnnxModel:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = level
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    onnx = ort.InferenceSession(str(bundle.model_path), options, providers=["CPUExecutionProvider"])
    return OnnxModel(bundle.manifest, onnx)


def runner(model: OnnxModel, feed: Feed, width: int) -> Callable[[], None]:
    rows = len(next(iter(feed.values())))
    slices = [{k: v[start : start + width] for k, v in feed.items()} for start in range(0, rows, width)]
    model.predict_feed(slices[0])  # warm-up

    def run() -> None:
        for part in slices:
            model.predict_feed(part)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=524_288, help="rows per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the table shows medians)")
    parser.add_argument("--bundle", type=Path, help="an existing bundle of the bench forest (skips training)")
    args = parser.parse_args()
    configure_logging("WARNING")
    console = Console(width=None if sys.stdout.isatty() else 140)
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-trees-") as tmp:
        os.environ.setdefault("EDGELOOP_HOME", str(Path(tmp) / "home"))
        if args.bundle is None:
            with console.status("training and converting the forest"):
                args.bundle = train_and_convert(Path(tmp))[0]
        bundle = load_bundle(args.bundle)
        table = make_rows(args.rows, seed=2)
        feed = {name: table[name].to_numpy().astype(np.float32).reshape(-1, 1) for name in FEATURES}
        basic, full = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        one = session(bundle, 1, full)
        numpy_model = OnnxModel.load(bundle, runtime="numpy")
        variants: dict[str, Callable[[], None]] = {
            "onnxruntime, 1 thread, 1,024-row calls": runner(one, feed, 1_024),
            "onnxruntime, 1 thread, 10,000-row calls (the bench's raw)": runner(one, feed, 10_000),
            "onnxruntime, 1 thread, 16,384-row calls (the local engine's slice)": runner(one, feed, 16_384),
            "onnxruntime, 1 thread, 65,536-row calls (Spark's Arrow batch)": runner(one, feed, 65_536),
            "onnxruntime, 1 thread, 262,144-row calls": runner(one, feed, 262_144),
            "onnxruntime, 1 thread, 65,536, graph optimisation basic": runner(session(bundle, 1, basic), feed, 65_536),
            "onnxruntime, 2 threads in one session, 65,536": runner(session(bundle, 2, full), feed, 65_536),
            "numpy runtime (contracts), 16,384-row calls": runner(numpy_model, feed, 16_384),
            "numpy runtime (contracts), 65,536-row calls": runner(numpy_model, feed, 65_536),
        }
        try:
            compiled = OnnxModel(bundle.manifest, NumpySession.load(bundle.model_path, compile_trees=True))
        except ImportError:
            console.print("numba is not installed: the compiled tree walk is left out (pip install 'edgeloop[batch]')")
        else:
            variants["numpy runtime, trees compiled by numba (batch runtime numba), 16,384"] = runner(
                compiled, feed, 16_384
            )
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        wall: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(1, args.rounds + 1):
            for name, run in variants.items():
                with console.status(f"round {round_}/{args.rounds}: {name}"):
                    started, before = time.perf_counter(), time.process_time()
                    run()
                    cpu[name].append((time.process_time() - before) / args.rows * 1e6)
                    wall[name].append(args.rows / (time.perf_counter() - started))
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    result = Table(
        title=f"forest evaluation, {args.rows:,} in-memory rows, median of {args.rounds} interleaved rounds "
        f"({os.cpu_count()} cores, load avg {load})"
    )
    for column in ("variant", "CPU-s per 1M rows", "range", "rows/s (wall)"):
        result.add_column(column, justify="left" if column == "variant" else "right")
    for name in variants:
        result.add_row(
            name,
            f"{statistics.median(cpu[name]):.2f}",
            f"{min(cpu[name]):.2f}-{max(cpu[name]):.2f}",
            f"{statistics.median(wall[name]):,.0f}",
        )
    console.print(result)


if __name__ == "__main__":
    main()

"""Which runtime scores a batch job: onnxruntime, or the numpy runtime with its tree ensembles compiled by numba.

The bundle is the same `model.onnx` either way. `numba` walks tree ensembles 2-3x cheaper per row than
onnxruntime's TreeEnsemble kernel (contracts/compiled_trees.py; bench/bench_tree_eval.py), which is most of
a forest's scoring time. `auto` (the default) takes it when numba is installed (the `batch` extra) and the
model has a tree ensemble and only operators the numpy runtime implements; otherwise onnxruntime, with the
reason logged. Before a row is written, the first rows of the job are scored by both runtimes and compared
(labels equal, probabilities within the bundle's golden tolerance): on a difference `auto` scores the job
with onnxruntime and says why; an explicit `numba` stops with an integrity error. No job writes numbers that
onnxruntime would not have given.

    loaded = load_runtime(bundle, sessions=2, choice="auto")
    loaded = loaded.checked(plan, first_batch)      # the models to score with, verified
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np
import pyarrow as pa

from cloud_sync.batch.columns import ScoringPlan, feature_columns
from contracts.bundle import Bundle
from contracts.errors import EdgeloopError, InputError, IntegrityError
from contracts.logs import log_event
from contracts.runtime import OnnxModel, encode_columns
from contracts.runtime_numpy import NumpySession

__all__ = [
    "BATCH_RUNTIMES",
    "VERIFY_ROWS",
    "BatchRuntime",
    "LoadedRuntime",
    "load_onnxruntime",
    "load_runtime",
]

logger = logging.getLogger("edgeloop.batch")

BatchRuntime = Literal["auto", "onnxruntime", "numba"]
BATCH_RUNTIMES: tuple[str, ...] = get_args(BatchRuntime)
VERIFY_ROWS = 4096
"""Rows of the job's first batch scored by both runtimes before the compiled one is trusted (~15 ms)."""


def load_onnxruntime(bundle: Bundle, count: int, threads: int = 1) -> list[OnnxModel]:
    """`count` onnxruntime sessions with `threads` intra-op threads each (`OnnxModel.load`: spinning off, which
    matters here: spinning threads take the cores the reader and writer threads need, and on 2 busy cores 2
    spinning threads scored half as many rows per second as 2 sleeping ones), created in parallel (a forest
    takes ~0.1-0.3 s)."""
    if count <= 1:
        return [OnnxModel.load(bundle, threads, runtime="onnxruntime") for _ in range(count)]
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="edgeloop-load") as executor:
        return list(executor.map(lambda _: OnnxModel.load(bundle, threads, runtime="onnxruntime"), range(count)))


@dataclass(frozen=True)
class LoadedRuntime:
    """The models a job scores with (one per worker), the runtime they run on, and why it was chosen."""

    bundle: Bundle
    models: list[OnnxModel]
    runtime: Literal["onnxruntime", "numba"]
    reason: str
    choice: BatchRuntime
    reference: OnnxModel | None = None
    """The onnxruntime session the compiled runtime's first rows are compared with (numba only)."""
    verified_rows: int = 0

    def checked(self, plan: ScoringPlan, batch: pa.RecordBatch) -> LoadedRuntime:
        """Compare the compiled runtime with onnxruntime on the first VERIFY_ROWS rows of `batch`; the models to
        score the job with (onnxruntime ones when `auto` found a difference)."""
        if self.reference is None:
            return self
        sample = batch.slice(0, VERIFY_ROWS)
        feed = encode_columns(feature_columns(sample, plan.inputs), plan.inputs)
        ours, theirs = self.models[0].predict_feed(feed), self.reference.predict_feed(feed)
        tolerance = self.bundle.manifest.golden_tolerance
        difference = ""
        if not np.array_equal(ours.labels, theirs.labels):
            difference = f"{int(np.sum(ours.labels != theirs.labels))} of {sample.num_rows} labels differ"
        else:
            gap = float(np.max(np.abs(ours.probabilities - theirs.probabilities), initial=0.0))
            if not gap <= tolerance:  # NaN is a difference too
                difference = f"probabilities differ by up to {gap:.3g} (tolerance {tolerance:g})"
        if not difference:
            return replace(self, reference=None, verified_rows=sample.num_rows)
        if self.choice == "numba":
            raise IntegrityError(
                f"the numba runtime and onnxruntime disagree on this model: {difference}; "
                "score with --runtime onnxruntime"
            )
        reason = f"numba and onnxruntime disagree on this model ({difference}): onnxruntime scores it"
        log_event(logger, "batch runtime changed", level=logging.WARNING, runtime="onnxruntime", reason=reason)
        models = [self.reference, *load_onnxruntime(self.bundle, len(self.models) - 1)]
        return replace(self, models=models, runtime="onnxruntime", reason=reason, reference=None)


def load_runtime(bundle: Bundle, sessions: int, choice: str = "auto", threads: int = 1) -> LoadedRuntime:
    """The models for `sessions` workers on the runtime `choice` resolves to (see the module docstring);
    onnxruntime sessions get `threads` intra-op threads each."""
    from contracts.compiled_trees import numba_importable, warm_up

    if choice not in BATCH_RUNTIMES:
        raise InputError(f"runtime must be one of {', '.join(BATCH_RUNTIMES)}, got {choice!r}")
    if choice == "onnxruntime":
        models = load_onnxruntime(bundle, sessions, threads)
        return LoadedRuntime(bundle, models, "onnxruntime", "chosen", "onnxruntime")
    if not numba_importable():
        why_not = "numba is not installed (pip install 'edgeloop[batch]')"
        if choice == "numba":
            raise InputError(f"--runtime numba cannot score this model: {why_not}")
        log_event(logger, "batch runtime chosen", runtime="onnxruntime", reason=why_not)
        return LoadedRuntime(bundle, load_onnxruntime(bundle, sessions, threads), "onnxruntime", why_not, "auto")
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="edgeloop-load") as executor:
        executor.submit(warm_up)  # numba loads its compiled code while this thread reads the model
        loading = executor.submit(OnnxModel.load, bundle, threads, runtime="onnxruntime")
        try:
            compiled: OnnxModel | None = OnnxModel.load(bundle, runtime="numpy", compile_trees=True)
        except EdgeloopError as exc:  # an operator the numpy runtime does not implement
            if choice == "numba":
                raise
            compiled, why_not = None, str(exc)
        reference = loading.result()
    if compiled is not None and isinstance(compiled.session, NumpySession) and compiled.session.compiled_trees:
        reason = "tree ensembles walked by compiled code, checked against onnxruntime on the first rows"
        choice_made: BatchRuntime = "numba" if choice == "numba" else "auto"
        return LoadedRuntime(bundle, [compiled] * sessions, "numba", reason, choice_made, reference)
    if compiled is not None:
        why_not = "the model has no tree ensemble, where the compiled walk gains"
        if choice == "numba":
            raise InputError(f"--runtime numba cannot score this model: {why_not}")
    log_event(logger, "batch runtime chosen", runtime="onnxruntime", reason=why_not)
    models = [reference, *load_onnxruntime(bundle, sessions - 1, threads)]
    return LoadedRuntime(bundle, models, "onnxruntime", why_not, "auto")

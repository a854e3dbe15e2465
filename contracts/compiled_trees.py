"""The numpy runtime's tree walk compiled to machine code by numba, where numba is installed (the `batch` extra).

Same algorithm, same arrays and same answers as `TreeEnsemble.scores` in contracts/numpy_trees.py: every
(row, tree) pair walks its tree one level per step, `depth` steps, a leaf pointing at itself; the leaf weights
are summed in float64. What numba changes is that the steps run as one loop nest instead of numpy passes over
index arrays: a block of rows walks one tree at a time (the tree's nodes stay in cache), and each step is
branch-free (`children[2 * node + went_true]`), so the CPU overlaps the walks of the block's rows instead of
guessing at every split. Measured on the bench forest (100 trees, depth 10, 20 features, one core): 2.6 CPU-s
per 1M rows against onnxruntime's 7.4 for the same model.onnx (bench/bench_tree_eval.py).

    walk = compile_walk(ensemble)          # ImportError when numba is not installed
    scores = walk(features)                # (rows, classes) float64, equal to ensemble.scores(features)

The kernel releases the GIL, so one thread per core scores in parallel; it is compiled on first use and
cached on disk by numba (next to this file, or in numba's cache directory when that is not writable).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

__all__ = ["BLOCK_ROWS", "TreeArrays", "compile_walk", "numba_importable", "warm_up"]

BLOCK_ROWS = 2048
"""Rows that walk one tree together: 2,048 rows of 20 float32 features (160 KiB) and their node indices stay
in L2 while a tree's nodes are read; 512 rows cost 18 % more CPU on the bench forest, 16k rows 2 % more."""


class TreeArrays(Protocol):
    """What the walk reads of `contracts.numpy_trees.TreeEnsemble` (which imports this module)."""

    @property
    def roots(self) -> np.ndarray: ...

    @property
    def feature(self) -> np.ndarray: ...

    @property
    def threshold(self) -> np.ndarray: ...

    @property
    def children(self) -> np.ndarray: ...

    @property
    def mode(self) -> np.ndarray | None: ...

    @property
    def single_mode(self) -> int: ...

    @property
    def missing_true(self) -> np.ndarray | None: ...

    @property
    def depth(self) -> int: ...

    @property
    def leaf_weights(self) -> np.ndarray: ...


def numba_importable() -> bool:
    """True when numba imports here (it is in the `batch` extra; PyPI has no wheel for 32-bit ARM)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _walk(
    features: np.ndarray,
    roots: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    children: np.ndarray,
    modes: np.ndarray,
    missing_true: np.ndarray,
    depth: int,
    leaf_weights: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - runs compiled; tests compare its results with the numpy walk's
    """Add every tree's leaf weights to `out` (rows, classes). `modes` holds one comparison per node (0 <=, 1 <,
    2 >=, 3 >, 4 ==, 5 !=) or a single one for every node; `missing_true` is per node or empty."""
    rows = features.shape[0]
    classes = leaf_weights.shape[1]
    per_node_mode = modes.size > 1
    tracked = missing_true.size > 0
    index = np.empty(BLOCK_ROWS, np.int32)
    for start in range(0, rows, BLOCK_ROWS):
        count = min(BLOCK_ROWS, rows - start)
        for tree in range(roots.size):
            for row in range(count):
                index[row] = roots[tree]
            for _ in range(depth):
                for row in range(count):
                    node = index[row]
                    value = features[start + row, feature[node]]
                    limit = threshold[node]
                    mode = modes[node] if per_node_mode else modes[0]
                    if mode == 0:
                        went_true = value <= limit
                    elif mode == 1:
                        went_true = value < limit
                    elif mode == 2:
                        went_true = value >= limit
                    elif mode == 3:
                        went_true = value > limit
                    elif mode == 4:
                        went_true = value == limit
                    else:
                        went_true = value != limit
                    if tracked and missing_true[node] and np.isnan(value):
                        went_true = True
                    index[row] = children[2 * node + went_true]
            for row in range(count):
                for klass in range(classes):
                    out[start + row, klass] += leaf_weights[index[row], klass]


def _walk_less_equal(
    features: np.ndarray,
    roots: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    children: np.ndarray,
    modes: np.ndarray,
    missing_true: np.ndarray,
    depth: int,
    leaf_weights: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - runs compiled; tests compare its results with the numpy walk's
    """`_walk` for the trees the converter emits (every split `<=`, no missing-value tracks): the comparison
    known in advance costs about 1.5x less per step than choosing it at every node (one profile on the bench
    forest: 3.3 against 5.1 CPU-s per 1M rows)."""
    rows = features.shape[0]
    classes = leaf_weights.shape[1]
    index = np.empty(BLOCK_ROWS, np.int32)
    for start in range(0, rows, BLOCK_ROWS):
        count = min(BLOCK_ROWS, rows - start)
        for tree in range(roots.size):
            for row in range(count):
                index[row] = roots[tree]
            for _ in range(depth):
                for row in range(count):
                    node = index[row]
                    index[row] = children[2 * node + (features[start + row, feature[node]] <= threshold[node])]
            for row in range(count):
                for klass in range(classes):
                    out[start + row, klass] += leaf_weights[index[row], klass]


@functools.cache
def _compiled(general: bool) -> Any:
    import numba

    function = _walk if general else _walk_less_equal
    try:
        return numba.njit(nogil=True, cache=True)(function)
    except RuntimeError:  # no writable cache location (read-only install, no home): compile in each process
        return numba.njit(nogil=True)(function)


def warm_up() -> None:
    """Compile (or load from numba's disk cache, ~0.3 s) the walk of the trees the converter emits, on a one-node
    tree, so that a caller can do it while it reads the model."""
    one, none = np.zeros(1, np.int32), np.zeros(0, np.bool_)
    rows, weights = np.zeros((1, 1), np.float32), np.zeros((1, 1))
    _compiled(False)(rows, one, one, np.zeros(1, np.float32), np.zeros(2, np.int32), np.zeros(1, np.int8), none, 0,
                     weights, np.zeros((1, 1)))  # fmt: skip


def compile_walk(ensemble: TreeArrays) -> Callable[[np.ndarray], np.ndarray]:
    """A function of (rows, features) that returns `ensemble.scores(features)`, compiled by numba; the first call
    of the process compiles (or loads numba's on-disk cache), so it is made here on one row."""
    kernel = _compiled(not (ensemble.mode is None and ensemble.single_mode == 0 and ensemble.missing_true is None))
    roots = ensemble.roots.astype(np.int32)
    feature = ensemble.feature.astype(np.int32)
    threshold = np.ascontiguousarray(ensemble.threshold, dtype=np.float32)
    children = ensemble.children.astype(np.int32)
    modes = (
        np.asarray([ensemble.single_mode], dtype=np.int8) if ensemble.mode is None else ensemble.mode.astype(np.int8)
    )
    missing_true = (
        np.zeros(0, dtype=np.bool_) if ensemble.missing_true is None else ensemble.missing_true.astype(np.bool_)
    )
    weights = np.ascontiguousarray(ensemble.leaf_weights, dtype=np.float64)
    depth = int(ensemble.depth)

    def walk(features: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(features, dtype=np.float32)
        out = np.zeros((rows.shape[0], weights.shape[1]), dtype=np.float64)
        kernel(rows, roots, feature, threshold, children, modes, missing_true, depth, weights, out)
        return out

    walk(np.zeros((1, max(1, int(feature.max()) + 1)), dtype=np.float32))
    return walk

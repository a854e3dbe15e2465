"""ai.onnx.ml TreeEnsembleClassifier in numpy: every (row, tree) pair walks its tree one level per step.

At load, the node arrays of the ONNX attributes are compiled into flat arrays indexed by a global node number:
the feature and threshold of each node, its two children side by side (`children[2 * node + went_true]`, a
leaf points at itself) and the class weights of each leaf. Prediction then runs `depth` numpy steps over an
index array of shape (rows, trees), with no Python loop per node or per tree:

    ensemble = TreeEnsemble.from_node(node)
    leaves = ensemble.leaves(features)                 # (rows, trees) global node numbers
    scores = ensemble.leaf_weights[leaves].sum(axis=1)  # (rows, classes)

Rows are processed in blocks so that the index arrays stay in the CPU cache on a large batch. The label and
probability conventions are onnxruntime's (`tree_ensemble_aggregator.h`): with two classes and one scored
column, the score is the positive class's; all-positive weights (a forest) give [1 - s, s] and label on
s > 0.5, signed weights (boosting) give [sigmoid(-s), sigmoid(s)] under LOGISTIC and label on s > 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from contracts.errors import UnsupportedOperator
from contracts.onnx_proto import Node

__all__ = ["TreeEnsemble", "post_transform", "refuse", "tree_ensemble_classifier"]

_BLOCK_ROWS = 512
_MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5}
_LEAF = 6
_COMPARE: dict[int, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    0: np.less_equal,
    1: np.less,
    2: np.greater_equal,
    3: np.greater,
    4: np.equal,
    5: np.not_equal,
}


def refuse(node: Node, what: str) -> UnsupportedOperator:
    """The load-time refusal of a known operator used in a form the numpy runtime does not implement."""
    name = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
    return UnsupportedOperator(
        f"model.onnx uses {name} with {what}, which the numpy runtime does not implement; "
        'serve this bundle with onnxruntime (runtime = "onnxruntime")',
        operator=name,
    )


def post_transform(scores: np.ndarray, transform: str) -> np.ndarray:
    """onnxruntime's post_transform on (rows, classes) scores: NONE, LOGISTIC (each) or SOFTMAX (each row)."""
    if transform == "LOGISTIC":
        with np.errstate(over="ignore"):  # exp(-s) overflows to inf for s << 0, and 1 / inf is the right 0
            return 1.0 / (1.0 + np.exp(-scores))
    if transform == "SOFTMAX":
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return scores


def _attr(node: Node, name: str) -> np.ndarray:
    value = node.attributes.get(name)
    if not isinstance(value, np.ndarray):
        value = node.attributes.get(f"{name}_as_tensor")
    if not isinstance(value, np.ndarray):
        raise refuse(node, f"no {name} attribute")
    return value.ravel()


@dataclass(frozen=True)
class TreeEnsemble:
    roots: np.ndarray
    """(trees,) global node number of each tree's root."""
    feature: np.ndarray
    threshold: np.ndarray
    """float32, compared with the float32 features as onnxruntime does."""
    children: np.ndarray
    """(2 * nodes,): [false child, true child] of each node; a leaf's are itself."""
    mode: np.ndarray | None
    """Comparison per node when the trees mix modes; None when every branch is `single_mode`."""
    single_mode: int
    missing_true: np.ndarray | None
    """Per node: a NaN feature goes to the true child; None when no node says so."""
    depth: int
    leaf_weights: np.ndarray
    """(nodes, classes) float64: the summed class weights of each leaf, zero for branches."""
    compiled: Callable[[np.ndarray], np.ndarray] | None = field(default=None, compare=False, repr=False)
    """The same walk compiled by numba (contracts/compiled_trees.py), when `with_compiled_walk` made it."""

    @classmethod
    def from_node(cls, node: Node, classes: int) -> TreeEnsemble:
        tree_ids, node_ids = _attr(node, "nodes_treeids").astype(np.int64), _attr(node, "nodes_nodeids")
        modes_raw = node.attributes.get("nodes_modes")
        if not isinstance(modes_raw, list) or len(modes_raw) != len(tree_ids):
            raise refuse(node, "missing nodes_modes")
        names = [mode.decode() for mode in modes_raw]
        unknown = sorted(set(names) - set(_MODES) - {"LEAF"})
        if unknown:
            raise refuse(node, f"node mode {unknown[0]}")
        mode = np.asarray([_MODES.get(name, _LEAF) for name in names], dtype=np.int8)
        span = int(node_ids.max()) + 1
        keys = tree_ids * span + node_ids.astype(np.int64)
        order = np.argsort(keys, kind="stable")

        def position(trees: np.ndarray, nodes: np.ndarray) -> np.ndarray:
            wanted = trees.astype(np.int64) * span + nodes.astype(np.int64)
            found = order[np.clip(np.searchsorted(keys, wanted, sorter=order), 0, len(keys) - 1)]
            if (keys[found] != wanted).any():
                raise refuse(node, "a child or leaf id that names no node")
            return found

        count = len(tree_ids)
        is_leaf = mode == _LEAF
        own = np.arange(count)
        true_ids = np.where(is_leaf, node_ids, _attr(node, "nodes_truenodeids"))
        false_ids = np.where(is_leaf, node_ids, _attr(node, "nodes_falsenodeids"))
        true_child = np.where(is_leaf, own, position(tree_ids, true_ids))
        false_child = np.where(is_leaf, own, position(tree_ids, false_ids))
        children = np.stack([false_child, true_child], axis=1).ravel().astype(np.intp)
        referenced = np.zeros(count, dtype=bool)
        referenced[true_child[~is_leaf]] = True
        referenced[false_child[~is_leaf]] = True
        roots = np.flatnonzero(~referenced)
        if len(roots) != len(np.unique(tree_ids)):
            raise refuse(node, "trees that do not have exactly one root each")
        depth = _depth(roots, children, is_leaf)
        weights = np.zeros((count, classes), dtype=np.float64)
        class_ids = _attr(node, "class_ids").astype(np.intp)
        if class_ids.size and (class_ids.min() < 0 or class_ids.max() >= classes):
            raise refuse(node, "a class id outside classlabels")
        leaves = position(_attr(node, "class_treeids"), _attr(node, "class_nodeids"))
        np.add.at(weights, (leaves, class_ids), _attr(node, "class_weights").astype(np.float64))
        branch_modes = np.unique(mode[~is_leaf])
        tracks = node.attributes.get("nodes_missing_value_tracks_true")
        missing = np.asarray(tracks, dtype=bool) if isinstance(tracks, np.ndarray) and tracks.any() else None
        return cls(
            roots=roots.astype(np.intp),
            feature=np.where(is_leaf, 0, _attr(node, "nodes_featureids")).astype(np.intp),
            threshold=_attr(node, "nodes_values").astype(np.float32),
            children=children,
            mode=mode if len(branch_modes) > 1 else None,
            single_mode=int(branch_modes[0]) if len(branch_modes) else 0,
            missing_true=missing,
            depth=depth,
            leaf_weights=weights,
        )

    def leaves(self, features: np.ndarray) -> np.ndarray:
        """(rows, trees): the leaf each row reaches in each tree."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        rows, width = features.shape
        if rows <= _BLOCK_ROWS:
            return self._walk(features.ravel(), rows, width)
        blocks = [
            self._walk(features[start : start + _BLOCK_ROWS].ravel(), min(_BLOCK_ROWS, rows - start), width)
            for start in range(0, rows, _BLOCK_ROWS)
        ]
        return np.concatenate(blocks)

    def with_compiled_walk(self) -> TreeEnsemble:
        """This ensemble scoring through numba (ImportError when numba is not installed)."""
        from contracts.compiled_trees import compile_walk

        return replace(self, compiled=compile_walk(self))

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(rows, classes) float64: the summed leaf weights of every tree."""
        if self.compiled is not None:
            return self.compiled(features)
        rows = features.shape[0]
        if rows <= _BLOCK_ROWS:
            return self.leaf_weights[self.leaves(features)].sum(axis=1)
        return np.concatenate(
            [
                self.leaf_weights[self.leaves(features[start : start + _BLOCK_ROWS])].sum(axis=1)
                for start in range(0, rows, _BLOCK_ROWS)
            ]
        )

    def _walk(self, flat: np.ndarray, rows: int, width: int) -> np.ndarray:
        offsets = (np.arange(rows, dtype=np.intp) * width)[:, None]
        index = np.broadcast_to(self.roots, (rows, self.roots.size))
        compare = _COMPARE[self.single_mode]
        for _ in range(self.depth):
            values = flat[offsets + self.feature[index]]
            if self.mode is None:
                went_true = compare(values, self.threshold[index])
            else:
                went_true = self._compare_mixed(values, index)
            if self.missing_true is not None:
                went_true |= np.isnan(values) & self.missing_true[index]
            index = self.children[2 * index + went_true]
        return index

    def _compare_mixed(self, values: np.ndarray, index: np.ndarray) -> np.ndarray:
        assert self.mode is not None
        modes, thresholds = self.mode[index], self.threshold[index]
        went_true = np.zeros(index.shape, dtype=bool)
        for code, compare in _COMPARE.items():
            chosen = modes == code
            if chosen.any():
                went_true |= chosen & compare(values, thresholds)
        return went_true


def _depth(roots: np.ndarray, children: np.ndarray, is_leaf: np.ndarray) -> int:
    """Levels from the roots to the deepest leaf, found level by level (a cycle is refused)."""
    level, depth = roots, 0
    while True:
        branches = level[~is_leaf[level]]
        if branches.size == 0:
            return depth
        level = np.unique(np.concatenate([children[2 * branches], children[2 * branches + 1]]))
        depth += 1
        if depth > is_leaf.size:
            raise UnsupportedOperator("TreeEnsembleClassifier has a cycle in its trees; re-convert the model")


def tree_ensemble_classifier(node: Node, compiled: bool = False) -> Callable[..., tuple[np.ndarray, ...]]:
    """The kernel of a TreeEnsembleClassifier node; `compiled` walks the trees with numba (the batch engine's
    `runtime = "numba"`)."""
    strings = node.attributes.get("classlabels_strings")
    labels = (
        np.asarray([label.decode() for label in strings], dtype=object)
        if isinstance(strings, list)
        else np.asarray(node.attributes.get("classlabels_int64s"), dtype=np.int64).ravel()
    )
    transform_raw = node.attributes.get("post_transform", b"NONE")
    transform = transform_raw.decode() if isinstance(transform_raw, bytes) else "NONE"
    if transform not in ("NONE", "LOGISTIC", "SOFTMAX"):
        raise refuse(node, f"post_transform {transform}")
    if labels.size < 2:
        raise refuse(node, "fewer than two class labels")
    ensemble = TreeEnsemble.from_node(node, labels.size)
    if compiled:
        ensemble = ensemble.with_compiled_walk()
    base = node.attributes.get("base_values")
    if not isinstance(base, np.ndarray):
        base = node.attributes.get("base_values_as_tensor")
    base_values = base.astype(np.float64).ravel() if isinstance(base, np.ndarray) else np.zeros(0)
    scored = np.unique(_attr(node, "class_ids"))
    all_positive = bool((_attr(node, "class_weights") >= 0).all())
    if labels.size == 2 and scored.size == 1:
        if base_values.size > 1:
            raise refuse(node, "two base values for one scored class")
        column, offset = int(scored[0]), float(base_values[0]) if base_values.size else 0.0

        def binary(features: np.ndarray) -> tuple[np.ndarray, ...]:
            score = ensemble.scores(features)[:, column] + offset
            if all_positive:
                positive = score > 0.5
                probabilities = np.stack([1.0 - score, score], axis=1)
            else:
                positive = score > 0
                signed = np.stack([-score, score], axis=1)
                probabilities = post_transform(signed, "LOGISTIC") if transform == "LOGISTIC" else signed
            return labels[positive.astype(np.intp)], probabilities.astype(np.float32)

        return binary
    if scored.size != labels.size or (base_values.size not in (0, labels.size)):
        raise refuse(node, "classes that no leaf scores or a base_values length unlike the classes'")
    if labels.size == 2:
        raise refuse(node, "weights for both of two classes")
    offsets = base_values if base_values.size else np.zeros(labels.size)

    def multiclass(features: np.ndarray) -> tuple[np.ndarray, ...]:
        scores = ensemble.scores(features) + offsets
        return labels[np.argmax(scores, axis=1)], post_transform(scores, transform).astype(np.float32)

    return multiclass

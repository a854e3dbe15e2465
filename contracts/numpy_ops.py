"""The ONNX operators the converter emits, as numpy kernels for the numpy runtime (contracts/runtime_numpy.py).

Each entry of `KERNELS` turns a graph node into a kernel (a function of the node's input arrays returning its
output arrays) once, at load; attributes are read and checked there, so a bundle that needs something this
module does not implement is refused at load, never at the first prediction. The set is what skl2onnx writes
for the trainer's pipelines (every family, numeric, categorical and missing inputs; list them with
`edgeloop`'s test fixtures): Concat, Gather, Reshape, Cast, Where, Identity, and from ai.onnx.ml Imputer,
Scaler, LabelEncoder, ArrayFeatureExtractor, OneHotEncoder, Normalizer, LinearClassifier and
TreeEnsembleClassifier (contracts/numpy_trees.py). Semantics follow onnxruntime's CPU kernels, including the
binary-classifier conventions, so labels agree and probabilities agree to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from contracts.errors import SchemaError, UnsupportedOperator
from contracts.numpy_trees import post_transform, refuse, tree_ensemble_classifier
from contracts.onnx_proto import Node

__all__ = ["KERNELS", "Kernel", "kernel_for"]

Kernel = Callable[..., tuple[np.ndarray, ...]]
_ML = "ai.onnx.ml"

# TensorProto data types a Cast may target.
_CAST: dict[int, Any] = {1: np.float32, 6: np.int32, 7: np.int64, 8: object, 9: np.bool_, 11: np.float64}


def _text(node: Node, key: str, default: str) -> str:
    value = node.attributes.get(key, default.encode())
    return value.decode() if isinstance(value, bytes) else default


def _int(node: Node, key: str, default: int) -> int:
    value = node.attributes.get(key, default)
    return int(value) if isinstance(value, int) else default


def _array(node: Node, key: str) -> np.ndarray | None:
    value = node.attributes.get(key)
    return value if isinstance(value, np.ndarray) else None


def _strings(node: Node, key: str) -> list[str] | None:
    value = node.attributes.get(key)
    return [item.decode() for item in value] if isinstance(value, list) else None


def _concat(node: Node) -> Kernel:
    axis = _int(node, "axis", 1)
    return lambda *arrays: (np.concatenate(arrays, axis=axis),)


def _gather(node: Node) -> Kernel:
    axis = _int(node, "axis", 0)
    return lambda data, indices: (np.take(data, indices.astype(np.intp), axis=axis),)


def _reshape(node: Node) -> Kernel:
    if _int(node, "allowzero", 0):
        raise refuse(node, "allowzero=1")

    def run(data: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, ...]:
        target = [data.shape[i] if int(d) == 0 else int(d) for i, d in enumerate(shape)]
        return (data.reshape(target),)

    return run


def _cast(node: Node) -> Kernel:
    to = _int(node, "to", 0)
    if to not in _CAST:
        raise refuse(node, f"target type {to}")
    dtype = _CAST[to]
    if dtype is object:
        return lambda data: (np.asarray([str(v) for v in data.ravel()], dtype=object).reshape(data.shape),)
    return lambda data: (data.astype(dtype),)


def _where(node: Node) -> Kernel:
    def run(condition: np.ndarray, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, ...]:
        return (np.asarray(np.where(condition, left, right)),)

    return run


def _identity(node: Node) -> Kernel:
    return lambda data: (data,)


def _imputer(node: Node) -> Kernel:
    values = _array(node, "imputed_value_floats")
    if values is None or _array(node, "imputed_value_int64s") is not None:
        raise refuse(node, "integer imputation")
    replaced = node.attributes.get("replaced_value_float", 0.0)
    assert isinstance(replaced, float)
    fill = values.astype(np.float32)

    def run(data: np.ndarray) -> tuple[np.ndarray, ...]:
        mask = np.isnan(data) if np.isnan(replaced) else data == np.float32(replaced)
        if not mask.any():
            return (data,)
        full = np.broadcast_to(fill if fill.size > 1 else fill[0], data.shape)
        return (np.where(mask, full, data).astype(np.float32),)

    return run


def _scaler(node: Node) -> Kernel:
    offset, scale = _array(node, "offset"), _array(node, "scale")
    offset = np.zeros(1, np.float32) if offset is None else offset.astype(np.float32)
    scale = np.ones(1, np.float32) if scale is None else scale.astype(np.float32)
    return lambda data: (((data.astype(np.float32) - offset) * scale).astype(np.float32),)


def _label_encoder(node: Node) -> Kernel:
    if _int(node, "domain_version_hint", 0) or any(key.endswith("_tensor") for key in node.attributes):
        raise refuse(node, "tensor keys (LabelEncoder-4)")
    keys: list[Any] | None = _strings(node, "keys_strings")
    if keys is None:
        found = _array(node, "keys_int64s")
        found = _array(node, "keys_floats") if found is None else found
        keys = None if found is None else found.tolist()
    values: list[Any] | None = _strings(node, "values_strings")
    out_dtype: Any = object
    default: Any = _text(node, "default_string", "_Unused")
    if values is None:
        found = _array(node, "values_int64s")
        out_dtype, default = np.int64, _int(node, "default_int64", -1)
        if found is None:
            found = _array(node, "values_floats")
            out_dtype, default = np.float32, node.attributes.get("default_float", -0.0)
        values = None if found is None else found.tolist()
    if keys is None or values is None or len(keys) != len(values):
        raise refuse(node, "a key/value form it does not read")
    table = dict(zip(keys, values, strict=True))

    def run(data: np.ndarray) -> tuple[np.ndarray, ...]:
        flat = data.ravel().tolist()
        mapped = [table.get(item, default) for item in flat]
        return (np.asarray(mapped, dtype=out_dtype).reshape(data.shape),)

    return run


def _array_feature_extractor(node: Node) -> Kernel:
    return lambda data, indices: (np.take(data, indices.astype(np.intp).ravel(), axis=-1),)


def _one_hot_encoder(node: Node) -> Kernel:
    categories: list[Any] | None = _strings(node, "cats_strings")
    if categories is None:
        found = _array(node, "cats_int64s")
        categories = None if found is None else found.tolist()
    if categories is None:
        raise refuse(node, "no categories")
    zeros = _int(node, "zeros", 1)
    index = {category: position for position, category in enumerate(categories)}

    def run(data: np.ndarray) -> tuple[np.ndarray, ...]:
        flat = data.ravel().tolist()
        positions = np.fromiter((index.get(item, -1) for item in flat), dtype=np.intp, count=len(flat))
        if not zeros and (positions < 0).any():
            raise SchemaError("a category the model's one-hot encoder does not know was sent; send a known one")
        out = np.zeros((len(flat), len(categories) + 1), dtype=np.float32)
        out[np.arange(len(flat)), positions] = 1.0  # -1 lands in the spare last column
        return (out[:, :-1].reshape(*data.shape, len(categories)),)

    return run


def _normalizer(node: Node) -> Kernel:
    norm = _text(node, "norm", "MAX")
    if norm not in ("L1", "L2", "MAX"):
        raise refuse(node, f"norm {norm}")

    def run(data: np.ndarray) -> tuple[np.ndarray, ...]:
        values = data.astype(np.float32)
        if norm == "L1":
            total = np.abs(values).sum(axis=-1, keepdims=True)
        elif norm == "L2":
            total = np.sqrt((values * values).sum(axis=-1, keepdims=True))
        else:
            total = values.max(axis=-1, keepdims=True)
        return ((values / total).astype(np.float32),)

    return run


def _linear_classifier(node: Node) -> Kernel:
    labels: np.ndarray = (
        np.asarray(_strings(node, "classlabels_strings"), dtype=object)
        if _strings(node, "classlabels_strings") is not None
        else np.asarray(_array(node, "classlabels_ints"), dtype=np.int64)
    )
    coefficients, intercepts = _array(node, "coefficients"), _array(node, "intercepts")
    transform = _text(node, "post_transform", "NONE")
    if coefficients is None or transform not in ("NONE", "LOGISTIC", "SOFTMAX"):
        raise refuse(node, f"post_transform {transform}")
    targets = len(intercepts) if intercepts is not None else len(labels)
    if targets < 2 or targets != len(labels):
        raise refuse(node, "a single score column (binary with one coefficient row)")
    weights = coefficients.astype(np.float64).reshape(targets, -1).T
    bias = np.zeros(targets) if intercepts is None else intercepts.astype(np.float64)

    def run(data: np.ndarray) -> tuple[np.ndarray, ...]:
        scores = data.astype(np.float64) @ weights + bias
        return labels[np.argmax(scores, axis=1)], post_transform(scores, transform).astype(np.float32)

    return run


KERNELS: dict[tuple[str, str], Callable[[Node], Kernel]] = {
    ("", "Concat"): _concat,
    ("", "Gather"): _gather,
    ("", "Reshape"): _reshape,
    ("", "Cast"): _cast,
    ("", "Where"): _where,
    ("", "Identity"): _identity,
    (_ML, "Imputer"): _imputer,
    (_ML, "Scaler"): _scaler,
    (_ML, "LabelEncoder"): _label_encoder,
    (_ML, "ArrayFeatureExtractor"): _array_feature_extractor,
    (_ML, "OneHotEncoder"): _one_hot_encoder,
    (_ML, "Normalizer"): _normalizer,
    (_ML, "LinearClassifier"): _linear_classifier,
    (_ML, "TreeEnsembleClassifier"): tree_ensemble_classifier,
}


def kernel_for(node: Node, compile_trees: bool = False) -> Kernel:
    """The kernel of `node`; UnsupportedOperator names the operator when this runtime does not have it.
    `compile_trees` walks tree ensembles with numba (contracts/compiled_trees.py)."""
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    if compile_trees and (domain, node.op_type) == (_ML, "TreeEnsembleClassifier"):
        return tree_ensemble_classifier(node, compiled=True)
    factory = KERNELS.get((domain, node.op_type))
    if factory is None:
        name = f"{domain}.{node.op_type}" if domain else node.op_type
        raise UnsupportedOperator(
            f"model.onnx uses operator {name}, which the numpy runtime does not implement; "
            'serve this bundle with onnxruntime (runtime = "onnxruntime") or convert a supported pipeline',
            operator=name,
        )
    return factory(node)

"""sklearn pipeline -> ONNX with skl2onnx: one input per feature, plain tensor outputs (no ZipMap).

Before converting, every step of the pipeline is checked against the set this converter supports, so an
unsupported estimator gets a message naming it instead of a skl2onnx stack trace.
"""

from __future__ import annotations

from collections.abc import Iterator

from contracts.errors import ConversionError, UnsupportedModelError
from contracts.manifest import FeatureSpec

__all__ = ["SUPPORTED", "check_supported", "to_onnx"]

SUPPORTED = {
    "Pipeline",
    "ColumnTransformer",
    "SimpleImputer",
    "StandardScaler",
    "MinMaxScaler",
    "RobustScaler",
    "OneHotEncoder",
    "LogisticRegression",
    "RandomForestClassifier",
    "ExtraTreesClassifier",
    "DecisionTreeClassifier",
    "GradientBoostingClassifier",
}


def _walk(step: object) -> Iterator[object]:
    yield step
    for _, child in getattr(step, "steps", []):
        yield from _walk(child)
    for _, child, _ in getattr(step, "transformers_", []):
        if not isinstance(child, str):
            yield from _walk(child)


def check_supported(model: object) -> None:
    for step in _walk(model):
        name = type(step).__name__
        if name not in SUPPORTED:
            raise UnsupportedModelError(f"cannot convert {name}: supported steps are {', '.join(sorted(SUPPORTED))}")


def to_onnx(model: object, inputs: list[FeatureSpec], target_opset: int) -> object:
    """Return an onnx.ModelProto checked by onnx.checker."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    check_supported(model)
    initial_types = [
        (spec.name, FloatTensorType([None, 1]) if spec.kind == "numeric" else StringTensorType([None, 1]))
        for spec in inputs
    ]
    classifier = model.steps[-1][1] if hasattr(model, "steps") else model
    try:
        onnx_model = convert_sklearn(
            model,
            initial_types=initial_types,
            options={id(classifier): {"zipmap": False}},
            target_opset={"": target_opset, "ai.onnx.ml": 3},
        )
    except Exception as exc:  # skl2onnx raises many kinds; report the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"skl2onnx could not convert the pipeline: {first}") from None
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"onnx.checker rejected the converted model: {str(exc).splitlines()[0]}") from None
    outputs = [output.name for output in onnx_model.graph.output]
    if outputs != ["label", "probabilities"]:
        raise ConversionError(f"converted model has outputs {outputs}, expected ['label', 'probabilities']")
    return onnx_model

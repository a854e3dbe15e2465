"""The numpy runtime against the real thing: its protobuf reader against the `onnx` package on real bundles,
its kernels against onnxruntime on real bundles and on small hand-made graphs (tree modes and missing-value
tracks the converter does not emit today), and its refusal of an operator it does not implement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from contracts.bundle import load_bundle
from contracts.errors import InputError, IntegrityError, UnsupportedOperator
from contracts.onnx_proto import packed_varints, read_model, tensor_array
from contracts.runtime import OnnxModel, encode_records, resolve_runtime
from contracts.runtime_numpy import NumpySession
from tests.conftest import TrainedBundle

TOLERANCE = 1e-5


def _same(ours: object, theirs: object) -> bool:
    if isinstance(theirs, bytes | str | int | float):
        if isinstance(theirs, float) and np.isnan(theirs):
            return isinstance(ours, float) and np.isnan(ours)
        return ours == theirs
    if isinstance(theirs, onnx.TensorProto):
        return bool(np.array_equal(np.asarray(ours), numpy_helper.to_array(theirs)))
    theirs_list = list(theirs)  # type: ignore[call-overload]
    if theirs_list and isinstance(theirs_list[0], bytes):
        return ours == theirs_list
    return bool(np.array_equal(np.asarray(ours), np.asarray(theirs_list), equal_nan=True))


@pytest.mark.parametrize("fixture", ["rf_bundle", "logreg_bundle_v2"])
def test_reader_matches_the_onnx_package(fixture: str, request: pytest.FixtureRequest) -> None:
    trained: TrainedBundle = request.getfixturevalue(fixture)
    path = trained.bundle / "model.onnx"
    reference = onnx.load(str(path))
    ours = read_model(path.read_bytes())
    assert ours.opsets == {entry.domain: entry.version for entry in reference.opset_import}
    assert ours.graph.outputs == [output.name for output in reference.graph.output]
    assert ours.graph.inputs == [item.name for item in reference.graph.input]
    assert sorted(ours.graph.initializers) == sorted(init.name for init in reference.graph.initializer)
    for init in reference.graph.initializer:
        assert np.array_equal(ours.graph.initializers[init.name], numpy_helper.to_array(init))
    assert len(ours.graph.nodes) == len(reference.graph.node)
    for mine, theirs in zip(ours.graph.nodes, reference.graph.node, strict=True):
        assert (mine.op_type, mine.domain, mine.inputs, mine.outputs) == (
            theirs.op_type,
            theirs.domain,
            list(theirs.input),
            list(theirs.output),
        )
        assert sorted(mine.attributes) == sorted(attribute.name for attribute in theirs.attribute)
        for attribute in theirs.attribute:
            assert _same(mine.attributes[attribute.name], helper.get_attribute_value(attribute)), attribute.name


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_packed_varints_decode_large_and_negative_values() -> None:
    values = [0, 1, 127, 128, 300, 2**40 + 5, -1, -(2**63), 2**63 - 1]
    assert packed_varints(b"".join(_varint(v) for v in values)).tolist() == values
    assert packed_varints(b"").tolist() == []
    with pytest.raises(IntegrityError):
        packed_varints(b"\x80\x80")  # a varint cut short


def test_packed_and_unpacked_repeated_fields_read_alike() -> None:
    # TensorProto: dims=1 (packed here), data_type=2, int64_data=7 packed; then the same with unpacked int64s.
    payload = b"".join(_varint(v) for v in (-3, 5, 7))
    packed = b"\x0a\x01\x03" + b"\x10\x07" + b"\x3a" + _varint(len(payload)) + payload
    unpacked = b"\x08\x03" + b"\x10\x07" + b"".join(b"\x38" + _varint(v) for v in (-3, 5, 7))
    assert tensor_array(packed).tolist() == tensor_array(unpacked).tolist() == [-3, 5, 7]
    floats = numpy_helper.from_array(np.asarray([1.5, -2.0, np.inf], dtype=np.float32))
    floats.ClearField("raw_data")
    floats.float_data.extend([1.5, -2.0, np.inf])  # typed field instead of raw bytes
    assert tensor_array(floats.SerializeToString()).tolist() == [1.5, -2.0, np.inf]


def test_a_truncated_or_foreign_file_is_an_integrity_error(rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    data = (rf_bundle.bundle / "model.onnx").read_bytes()
    with pytest.raises(IntegrityError, match=r"truncated|malformed|corrupt"):
        read_model(data[: len(data) // 2])
    with pytest.raises(IntegrityError):
        read_model(b"not an onnx model at all, just text")


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def test_an_unknown_operator_is_refused_at_load_naming_it(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Sin", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedOperator) as raised:
        NumpySession.load(path)
    assert raised.value.operator == "Sin"
    assert "operator Sin" in str(raised.value) and "\n" not in str(raised.value)


def _ensemble(tmp_path: Path, modes: list[str], missing_true: list[int], post: str, weights: list[float]) -> Path:
    """A two-tree classifier on two features: tree 0 = one split at node 0, tree 1 = two levels."""
    node = helper.make_node(
        "TreeEnsembleClassifier",
        ["x"],
        ["label", "probabilities"],
        domain="ai.onnx.ml",
        nodes_treeids=[0, 0, 0, 1, 1, 1, 1, 1],
        nodes_nodeids=[0, 1, 2, 0, 1, 2, 3, 4],
        nodes_featureids=[0, 0, 0, 1, 0, 0, 0, 0],
        nodes_modes=[modes[0], "LEAF", "LEAF", modes[1], modes[2], "LEAF", "LEAF", "LEAF"],
        nodes_values=[0.5, 0, 0, 2.0, -1.0, 0, 0, 0],
        nodes_truenodeids=[1, 0, 0, 1, 3, 0, 0, 0],
        nodes_falsenodeids=[2, 0, 0, 2, 4, 0, 0, 0],
        nodes_missing_value_tracks_true=missing_true,
        class_treeids=[0, 0, 1, 1, 1],
        class_nodeids=[1, 2, 2, 3, 4],
        class_ids=[0, 0, 0, 0, 0],
        class_weights=weights,
        classlabels_int64s=[0, 1],
        post_transform=post,
    )
    graph = helper.make_graph(
        [node],
        "trees",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    return _save(helper.make_model(graph, opset_imports=opsets), tmp_path / f"trees-{'-'.join(modes)}-{post}.onnx")


def _compile_or_skip(compile_trees: bool) -> bool:
    if compile_trees:
        pytest.importorskip("numba", reason="numba (the batch extra) is not installed: the compiled tree walk")
    return compile_trees


@pytest.mark.parametrize("compile_trees", [False, True], ids=["numpy", "numba"])
@pytest.mark.parametrize(
    ("modes", "missing_true", "post", "weights"),
    [
        (["BRANCH_LEQ", "BRANCH_LEQ", "BRANCH_LEQ"], [0] * 8, "NONE", [0.1, 0.4, 0.2, 0.3, 0.45]),
        (["BRANCH_LT", "BRANCH_GTE", "BRANCH_GT"], [1, 0, 0, 0, 1, 0, 0, 0], "NONE", [0.1, 0.4, 0.2, 0.3, 0.45]),
        (["BRANCH_EQ", "BRANCH_NEQ", "BRANCH_LEQ"], [0, 0, 0, 1, 0, 0, 0, 0], "LOGISTIC", [-1.0, 0.7, 2.0, -0.3, 0.1]),
    ],
)
def test_tree_modes_and_missing_tracks_match_onnxruntime(
    tmp_path: Path, modes: list[str], missing_true: list[int], post: str, weights: list[float], compile_trees: bool
) -> None:
    path = _ensemble(tmp_path, modes, missing_true, post, weights)
    grid = np.asarray([-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0, np.nan], dtype=np.float32)
    x = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    session = NumpySession.load(path, compile_trees=_compile_or_skip(compile_trees))
    assert session.compiled_trees == (1 if compile_trees else 0)
    labels, probabilities = session.run(None, {"x": x})
    assert np.array_equal(labels, np.asarray(expected[0]).ravel())
    assert float(np.max(np.abs(probabilities - expected[1]))) <= TOLERANCE


@pytest.mark.parametrize("fixture", ["rf_bundle", "logreg_bundle_v2"])
def test_both_backends_agree_on_records_with_gaps(fixture: str, request: pytest.FixtureRequest) -> None:
    trained: TrainedBundle = request.getfixturevalue(fixture)
    bundle = load_bundle(trained.bundle)
    reference, ours = OnnxModel.load(bundle, runtime="onnxruntime"), OnnxModel.load(bundle, runtime="numpy")
    assert (reference.runtime, ours.runtime) == ("onnxruntime", "numpy")
    rng = np.random.default_rng(4)
    records = []
    for sample in bundle.manifest.golden_samples * 20:
        record = dict(sample.inputs)
        for spec in bundle.manifest.inputs:
            if spec.nullable and rng.random() < 0.2:
                record[spec.name] = None
            elif spec.kind == "numeric" and record[spec.name] is not None:
                record[spec.name] = float(record[spec.name]) * float(rng.uniform(0.5, 1.5))
            elif spec.kind == "categorical" and rng.random() < 0.1:
                record[spec.name] = "never-seen"
        records.append(record)
    feed = encode_records(records, bundle.manifest.inputs)
    expected, got = reference.predict_feed(feed), ours.predict_feed(feed)
    assert np.array_equal(got.labels, expected.labels)
    assert got.probabilities.dtype == np.float32 and got.probabilities.shape == expected.probabilities.shape
    assert float(np.max(np.abs(got.probabilities - expected.probabilities))) <= TOLERANCE
    assert ours.check_golden_samples() <= bundle.manifest.golden_tolerance


def test_the_compiled_walk_equals_the_numpy_walk_on_a_real_forest(rf_bundle: TrainedBundle) -> None:
    """Every row of several blocks (and a partial one), NaNs included, scores the same through both walks."""
    _compile_or_skip(True)
    model = read_model((rf_bundle.bundle / "model.onnx").read_bytes())
    node = next(node for node in model.graph.nodes if node.op_type == "TreeEnsembleClassifier")
    from contracts.compiled_trees import BLOCK_ROWS
    from contracts.numpy_trees import TreeEnsemble

    ensemble = TreeEnsemble.from_node(node, 2)
    compiled = ensemble.with_compiled_walk()
    width = int(ensemble.feature.max()) + 1
    rows = np.random.default_rng(3).normal(0, 50, size=(2 * BLOCK_ROWS + 37, width)).astype(np.float32)
    rows[::7, 0] = np.nan
    expected = ensemble.scores(rows)
    assert expected.std() > 0  # the rows reach different leaves
    assert np.array_equal(compiled.scores(rows), expected)


def test_runtime_choice() -> None:
    assert resolve_runtime("numpy") == "numpy"
    assert resolve_runtime("auto") == resolve_runtime("onnxruntime") == "onnxruntime"  # installed here
    with pytest.raises(InputError, match="auto, onnxruntime or numpy"):
        resolve_runtime("tensorrt")


def test_the_converter_gate_refuses_a_model_the_numpy_runtime_cannot_run(
    rf_bundle: TrainedBundle, tmp_path: Path
) -> None:
    """check_runtimes is the converter's parity gate on both runtimes; an operator numpy lacks fails it, named."""
    import pandas as pd

    from contracts.bundle import Bundle
    from contracts.errors import ConversionError
    from converter.parity import check_runtimes

    bundle = load_bundle(rf_bundle.bundle)
    model = onnx.load(str(bundle.model_path))
    last = [node for node in model.graph.node if "probabilities" in node.output][-1]
    last.output[list(last.output).index("probabilities")] = "raw_probabilities"
    model.graph.node.append(helper.make_node("Abs", ["raw_probabilities"], ["probabilities"]))
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    edited = Bundle(path=tmp_path, manifest=bundle.manifest, signed=False)
    names = bundle.manifest.feature_names
    features = pd.DataFrame(
        {
            name: pd.Series([sample.inputs[name] for sample in bundle.manifest.golden_samples], dtype=object)
            for name in names
        }
    )

    class Answers:  # the golden answers as a "sklearn model": what the converter compares with
        def predict(self, frame: pd.DataFrame) -> np.ndarray:
            return np.asarray([sample.label for sample in bundle.manifest.golden_samples])

        def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
            return np.asarray([sample.probabilities for sample in bundle.manifest.golden_samples])

    report = check_runtimes(Answers(), load_bundle(rf_bundle.bundle), features, TOLERANCE)
    assert [replay.runtime for replay in report.runtimes or []] == ["onnxruntime", "numpy"]
    with pytest.raises(ConversionError, match="lacks Abs"):
        check_runtimes(Answers(), edited, features, TOLERANCE)


def test_public_keys_are_read_without_cryptography_and_other_keys_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from contracts.signing import PublicKey, generate_keypair, key_id, load_private_key, load_public_key, sign_bytes

    private_path, public_path = generate_keypair(tmp_path / "keys")
    private = load_private_key(private_path)
    public = load_public_key(public_path)
    assert isinstance(public, PublicKey) and len(public.raw) == 32
    assert key_id(public) == key_id(private.public_key())
    from contracts.signing import verify_bytes

    verify_bytes(b"data", sign_bytes(b"data", private), public)
    with pytest.raises(IntegrityError, match="altered after signing"):
        verify_bytes(b"other", sign_bytes(b"data", private), public)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "ec.pub").write_bytes(
        other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for bad in (tmp_path / "ec.pub", private_path):
        with pytest.raises(InputError, match="not an Ed25519 PEM public key") as raised:
            load_public_key(bad)
        assert "\n" not in str(raised.value)

"""A minimal reader of the ONNX protobuf file, for the numpy runtime on devices without `onnx` or onnxruntime.

It decodes the protobuf wire format (varints, fixed 32/64-bit, length-delimited fields) for the fields a graph
evaluator needs, and skips everything else by wire type, so a newer file with fields unknown here still reads:

    model = read_model(Path("model.onnx").read_bytes())
    model.graph.nodes[0].op_type, model.graph.nodes[0].attributes["coefficients"]
    model.opsets  # {"": 17, "ai.onnx.ml": 3}

Field numbers are those of onnx/onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto,
ValueInfoProto). Packed repeated integers are decoded with numpy, not a Python loop, so a 100-tree forest's
attribute arrays (tens of thousands of entries each) read in milliseconds.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from contracts.errors import IntegrityError

__all__ = ["Graph", "Model", "Node", "packed_varints", "read_model", "tensor_array"]

AttributeValue = float | int | bytes | np.ndarray | list[bytes]
"""A decoded attribute: FLOAT -> float, INT -> int, STRING -> bytes, TENSOR -> ndarray, FLOATS/INTS -> ndarray,
STRINGS -> list of bytes."""

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5

# TensorProto.DataType -> numpy dtype, for raw_data and the typed repeated fields.
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("u1"),
    3: np.dtype("i1"),
    4: np.dtype("<u2"),
    5: np.dtype("<i2"),
    6: np.dtype("<i4"),
    7: np.dtype("<i8"),
    9: np.dtype("?"),
    11: np.dtype("<f8"),
    12: np.dtype("<u4"),
    13: np.dtype("<u8"),
}
_STRING = 8


@dataclass(frozen=True)
class Node:
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict[str, AttributeValue]
    name: str = ""


@dataclass(frozen=True)
class Graph:
    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: list[str]
    """Names of the graph inputs that are not initializers (what a caller feeds)."""
    outputs: list[str]


@dataclass(frozen=True)
class Model:
    graph: Graph
    opsets: dict[str, int] = field(default_factory=dict)
    """Domain ("" for the default domain) -> opset version."""


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise IntegrityError("model.onnx is truncated (a varint runs past the end); re-download the bundle")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise IntegrityError("model.onnx has a malformed varint; the bundle is corrupt, re-download it")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value): an int for varint/fixed fields, a memoryview for length-delimited."""
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        number, wire, value, pos = _field_at(view, pos)
        yield number, wire, value


def packed_varints(data: bytes | memoryview | np.ndarray) -> np.ndarray:
    """Decode a packed run of varints into int64 (two's complement, as protobuf writes negative int64s)."""
    raw = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64)
    if raw[-1] & 0x80:
        raise IntegrityError("model.onnx has a truncated packed varint; the bundle is corrupt, re-download it")
    ends = np.flatnonzero(raw < 0x80)
    starts = np.concatenate(([0], ends[:-1] + 1))
    group = np.repeat(np.arange(ends.size), ends - starts + 1)
    position = np.arange(raw.size) - starts[group]
    if position.max() > 9:
        raise IntegrityError("model.onnx has a malformed varint; the bundle is corrupt, re-download it")
    parts = (raw & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
    return np.add.reduceat(parts, starts).view(np.int64)


class _Repeated:
    """Collects a repeated numeric field that may arrive packed (one LENGTH field) or unpacked (one per value)."""

    def __init__(self, packed_dtype: str | None) -> None:
        self.packed_dtype = packed_dtype  # None: varints
        self.chunks: list[np.ndarray] = []

    def add(self, wire: int, value: int | memoryview, scalar_dtype: str) -> None:
        if wire == _LENGTH:
            assert isinstance(value, memoryview)
            chunk = packed_varints(value) if self.packed_dtype is None else np.frombuffer(value, self.packed_dtype)
            self.chunks.append(chunk)
        else:
            assert isinstance(value, int)
            if scalar_dtype == "<f4":
                self.chunks.append(np.asarray(struct.unpack("<f", value.to_bytes(4, "little")), dtype=np.float32))
            elif scalar_dtype == "<f8":
                self.chunks.append(np.asarray(struct.unpack("<d", value.to_bytes(8, "little")), dtype=np.float64))
            else:
                self.chunks.append(np.asarray([_signed(value)], dtype=np.int64))

    def array(self, dtype: str) -> np.ndarray:
        if not self.chunks:
            return np.zeros(0, dtype=dtype)
        return np.concatenate(self.chunks).astype(dtype, copy=False)


def _text(value: int | memoryview) -> str:
    assert isinstance(value, memoryview)
    return bytes(value).decode("utf-8")


def _tensor(data: memoryview) -> tuple[str, np.ndarray]:
    name, data_type, raw = "", 0, None
    dims = _Repeated(None)
    floats, doubles, int32s, int64s = _Repeated("<f4"), _Repeated("<f8"), _Repeated(None), _Repeated(None)
    strings: list[bytes] = []
    for number, wire, value in _fields(data):
        if number == 1:
            dims.add(wire, value, "int")
        elif number == 2:
            assert isinstance(value, int)
            data_type = value
        elif number == 4:
            floats.add(wire, value, "<f4")
        elif number == 5:
            int32s.add(wire, value, "int")
        elif number == 6:
            assert isinstance(value, memoryview)
            strings.append(bytes(value))
        elif number == 7:
            int64s.add(wire, value, "int")
        elif number == 8:
            name = _text(value)
        elif number == 9:
            assert isinstance(value, memoryview)
            raw = bytes(value)
        elif number == 10:
            doubles.add(wire, value, "<f8")
        elif number == 14 and value == 1:
            raise IntegrityError(f"tensor '{name}' is stored outside model.onnx (external data); bundles embed it")
    shape = tuple(int(d) for d in dims.array("int64"))
    if data_type == _STRING:
        array = np.asarray([s.decode("utf-8") for s in strings], dtype=object)
    elif data_type in _DTYPES:
        dtype = _DTYPES[data_type]
        if raw is not None:
            array = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)
        elif data_type == 1:
            array = floats.array("float32")
        elif data_type == 11:
            array = doubles.array("float64")
        elif data_type in (7, 13):
            array = int64s.array("int64").astype(dtype.newbyteorder("="))
        else:
            array = int32s.array("int64").astype(dtype.newbyteorder("="))
    else:
        raise IntegrityError(f"tensor '{name}' has ONNX data type {data_type}, which the numpy runtime cannot read")
    return name, array.reshape(shape) if shape or array.size == 1 else array


def tensor_array(data: bytes) -> np.ndarray:
    """A serialized TensorProto as a numpy array (for tests and tools)."""
    return _tensor(memoryview(data))[1]


def _run_varints(raw: np.ndarray, pos: int, key: int) -> tuple[np.ndarray, int]:
    """An unpacked repeated varint field (key, value, key, value, ...) starting at `pos`, decoded with numpy
    (ONNX's proto2 files write `ints` attributes this way); returns the values and the position after the run."""
    tail = raw[pos:]
    ends = np.flatnonzero(tail < 0x80)
    starts = np.concatenate(([0], ends[:-1] + 1))
    pairs = len(starts) // 2
    keys_ok = (tail[starts[0 : 2 * pairs : 2]] == key) & (ends[0 : 2 * pairs : 2] == starts[0 : 2 * pairs : 2])
    count = int(np.argmin(keys_ok)) if not keys_ok.all() else pairs
    if count == 0:
        raise IntegrityError("model.onnx has a malformed repeated field; the bundle is corrupt, re-download it")
    stop = int(ends[2 * count - 1]) + 1
    return packed_varints(tail[:stop])[1::2], pos + stop


def _run_fixed32(raw: np.ndarray, pos: int, key: int) -> tuple[np.ndarray, int]:
    """An unpacked repeated float field (key, 4 bytes, key, 4 bytes, ...) starting at `pos`."""
    tail = raw[pos:]
    most = len(tail) // 5
    keys_ok = tail[0 : 5 * most : 5] == key
    count = int(np.argmin(keys_ok)) if not keys_ok.all() else most
    values = tail[: 5 * count].reshape(count, 5)[:, 1:].copy().view("<f4").ravel()
    return values, pos + 5 * count


def _run_strings(blob: bytes, pos: int, key: int, strings: list[bytes]) -> int:
    """A run of short repeated strings (key, 1-byte length, bytes, ...) starting at `pos`, appended to `strings`
    (a tree ensemble's `nodes_modes`: one string per node, 160k in a 100-tree forest); returns the position after
    the run. A string of 128 bytes or more (2-byte length) ends the run and is read by `_field_at`."""
    end = len(blob)
    while pos + 1 < end and blob[pos] == key and blob[pos + 1] < 0x80:
        start = pos + 2
        pos = start + blob[pos + 1]
        if pos > end:
            raise IntegrityError("model.onnx is truncated (a field runs past the end); re-download the bundle")
        strings.append(blob[start:pos])
    return pos


def _field_at(view: memoryview, pos: int) -> tuple[int, int, int | memoryview, int]:
    """The field starting at `pos`: (number, wire type, value, position after it)."""
    key, pos = _varint(view, pos)
    number, wire = key >> 3, key & 7
    if wire == _VARINT:
        value, pos = _varint(view, pos)
        return number, wire, value, pos
    if wire == _LENGTH:
        size, pos = _varint(view, pos)
        if pos + size > len(view):
            raise IntegrityError("model.onnx is truncated (a field runs past the end); re-download the bundle")
        return number, wire, view[pos : pos + size], pos + size
    if wire == _FIXED32:
        return number, wire, int.from_bytes(view[pos : pos + 4], "little"), pos + 4
    if wire == _FIXED64:
        return number, wire, int.from_bytes(view[pos : pos + 8], "little"), pos + 8
    raise IntegrityError(f"model.onnx uses protobuf wire type {wire}, which ONNX never writes; it is corrupt")


def _attribute(data: memoryview) -> tuple[str, AttributeValue]:
    name, kind = "", 0
    scalar: AttributeValue | None = None
    floats, ints = _Repeated("<f4"), _Repeated(None)
    strings: list[bytes] = []
    raw = np.frombuffer(data, dtype=np.uint8)
    blob: bytes | None = None
    pos, end = 0, len(data)
    while pos < end:
        key = data[pos]
        if key == (9 << 3 | _LENGTH) and pos + 1 < end and data[pos + 1] < 0x80:  # strings, e.g. nodes_modes
            blob = bytes(data) if blob is None else blob
            pos = _run_strings(blob, pos, key, strings)
            continue
        if key == (8 << 3 | _VARINT):  # ints, unpacked: the bulk of a tree ensemble
            chunk, pos = _run_varints(raw, pos, key)
            ints.chunks.append(chunk)
            continue
        if key == (7 << 3 | _FIXED32):  # floats, unpacked
            chunk, pos = _run_fixed32(raw, pos, key)
            floats.chunks.append(chunk)
            continue
        number, wire, value, pos = _field_at(data, pos)
        if number == 1:
            name = _text(value)
        elif number == 20:
            assert isinstance(value, int)
            kind = value
        elif number == 2:
            assert isinstance(value, int)
            scalar = struct.unpack("<f", value.to_bytes(4, "little"))[0]
        elif number == 3:
            assert isinstance(value, int)
            scalar = _signed(value)
        elif number == 4:
            assert isinstance(value, memoryview)
            scalar = bytes(value)
        elif number == 5:
            assert isinstance(value, memoryview)
            scalar = _tensor(value)[1]
        elif number == 7:
            floats.add(wire, value, "<f4")
        elif number == 8:
            ints.add(wire, value, "int")
        elif number == 9:
            assert isinstance(value, memoryview)
            strings.append(bytes(value))
    if kind == 6:
        return name, floats.array("float32")
    if kind == 7:
        return name, ints.array("int64")
    if kind == 8:
        return name, strings
    if kind in (1, 2, 3, 4) and scalar is not None:
        return name, scalar
    if kind == 1:
        return name, 0.0
    if kind == 2:
        return name, 0
    if kind == 3:
        return name, b""
    raise IntegrityError(f"attribute '{name}' has ONNX attribute type {kind}, which the numpy runtime cannot read")


def _node(data: memoryview) -> Node:
    inputs: list[str] = []
    outputs: list[str] = []
    attributes: dict[str, AttributeValue] = {}
    op_type = domain = name = ""
    for number, _, value in _fields(data):
        if number == 1:
            inputs.append(_text(value))
        elif number == 2:
            outputs.append(_text(value))
        elif number == 3:
            name = _text(value)
        elif number == 4:
            op_type = _text(value)
        elif number == 5:
            assert isinstance(value, memoryview)
            key, attribute = _attribute(value)
            attributes[key] = attribute
        elif number == 7:
            domain = _text(value)
    return Node(op_type=op_type, domain=domain, inputs=inputs, outputs=outputs, attributes=attributes, name=name)


def _value_name(data: memoryview) -> str:
    for number, _, value in _fields(data):
        if number == 1:
            return _text(value)
    return ""


def _graph(data: memoryview) -> Graph:
    nodes: list[Node] = []
    initializers: dict[str, np.ndarray] = {}
    inputs: list[str] = []
    outputs: list[str] = []
    for number, _, value in _fields(data):
        assert isinstance(value, memoryview) or number not in (1, 5, 11, 12)
        if number == 1:
            nodes.append(_node(value))  # type: ignore[arg-type]
        elif number == 5:
            key, array = _tensor(value)  # type: ignore[arg-type]
            initializers[key] = array
        elif number == 11:
            inputs.append(_value_name(value))  # type: ignore[arg-type]
        elif number == 12:
            outputs.append(_value_name(value))  # type: ignore[arg-type]
        elif number == 15:
            raise IntegrityError("model.onnx has a sparse initializer, which the numpy runtime cannot read")
    fed = [name for name in inputs if name not in initializers]
    return Graph(nodes=nodes, initializers=initializers, inputs=fed, outputs=outputs)


def read_model(data: bytes) -> Model:
    """Decode a serialized ModelProto. Raises IntegrityError when the bytes are not a readable ONNX model."""
    graph: Graph | None = None
    opsets: dict[str, int] = {}
    for number, _, value in _fields(data):
        if number == 7:
            assert isinstance(value, memoryview)
            graph = _graph(value)
        elif number == 8:
            assert isinstance(value, memoryview)
            domain, version = "", 0
            for sub, _, item in _fields(value):
                if sub == 1:
                    domain = _text(item)
                elif sub == 2:
                    assert isinstance(item, int)
                    version = item
            opsets[domain] = version
    if graph is None:
        raise IntegrityError("model.onnx has no graph; it is not an ONNX model (re-convert the bundle)")
    return Model(graph=graph, opsets=opsets)

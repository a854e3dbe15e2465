"""The numpy runtime: runs a bundle's model.onnx with numpy alone, where onnxruntime has no wheel (32-bit ARM).

It reads the file with `contracts.onnx_proto` (no `onnx` package), turns every node into a numpy kernel from
`contracts.numpy_ops` at load, and answers `run()` the way an onnxruntime session does, so `OnnxModel` in
contracts/runtime.py serves either one:

    session = NumpySession.load(Path("bundle/model.onnx"))
    labels, probabilities = session.run(["label", "probabilities"], feed)

An operator the numpy runtime does not implement refuses the file at load (UnsupportedOperator, naming it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contracts.errors import IntegrityError
from contracts.numpy_ops import Kernel, kernel_for
from contracts.onnx_proto import read_model

__all__ = ["NumpySession"]


@dataclass(frozen=True)
class _Step:
    kernel: Kernel
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class NumpySession:
    """A compiled graph: constants, then one kernel per node in the file's (topological) order."""

    runtime = "numpy"

    def __init__(
        self,
        steps: list[_Step],
        constants: dict[str, np.ndarray],
        inputs: list[str],
        outputs: list[str],
        compiled_trees: int = 0,
    ):
        self._steps = steps
        self.compiled_trees = compiled_trees
        """Tree ensembles walked by numba (`load(..., compile_trees=True)`); 0 = numpy only."""
        self._constants = constants
        self.input_names = inputs
        self.output_names = outputs

    @classmethod
    def load(cls, path: Path, compile_trees: bool = False) -> NumpySession:
        """Read and compile model.onnx; IntegrityError for an unreadable file, UnsupportedOperator for an
        operator this runtime does not implement. `compile_trees` walks the tree ensembles with numba
        (contracts/compiled_trees.py; ImportError without numba)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise IntegrityError(f"cannot read {path}: {exc.strerror}; re-install the bundle") from None
        model = read_model(data)
        graph = model.graph
        known = set(graph.initializers) | set(graph.inputs)
        steps = []
        for node in graph.nodes:
            absent = [name for name in node.inputs if name and name not in known]
            if absent:
                raise IntegrityError(f"model.onnx: node {node.op_type} reads '{absent[0]}' before anything writes it")
            steps.append(_Step(kernel_for(node, compile_trees), tuple(node.inputs), tuple(node.outputs)))
            known.update(node.outputs)
        missing = [name for name in graph.outputs if name not in known]
        if missing:
            raise IntegrityError(f"model.onnx: output '{missing[0]}' is not computed by any node")
        trees = sum(node.op_type == "TreeEnsembleClassifier" for node in graph.nodes) if compile_trees else 0
        return cls(steps, dict(graph.initializers), list(graph.inputs), list(graph.outputs), trees)

    def run(self, output_names: Sequence[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Evaluate the graph on `feed` (input name -> array) and return the named outputs."""
        values: dict[str, np.ndarray] = {**self._constants, **feed}
        for step in self._steps:
            results = step.kernel(*(values[name] for name in step.inputs))
            for name, result in zip(step.outputs, results, strict=False):
                values[name] = result
        return [values[name] for name in (output_names or self.output_names)]

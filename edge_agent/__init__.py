"""The edge agent: an offline-first model store, verified updates over MQTT and a local REST API on onnxruntime
or the numpy runtime.

Entry points: `edgeloop agent` / `python -m edge_agent` (edge_agent.app.run_agent). Imports nothing heavy:
no mlflow, scikit-learn, skl2onnx, onnx or pandas (tests/test_agent_process.py proves it).
"""

from __future__ import annotations

__all__: list[str] = []

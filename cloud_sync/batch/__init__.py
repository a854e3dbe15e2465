"""Central batch scoring: run the very bundle the devices run over a table of any size.

`score(model, input, output, settings)` resolves a bundle directory or `NAME@ALIAS`, verifies it, checks the
input's schema against the manifest, and scores with the local engine (pyarrow + onnxruntime, streaming) or
the Spark engine (`mapInArrow`, one onnxruntime session per executor process). `edgeloop score` is the CLI.
"""

from __future__ import annotations

from cloud_sync.batch.job import ScoreResult, score
from cloud_sync.batch.settings import ScoreSettings

__all__ = ["ScoreResult", "ScoreSettings", "score"]

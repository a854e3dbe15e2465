"""Lineage of a prediction: from its id back to the model version, its bundle, MLflow run, training data hash
and code version, who answered it (edge, cloud, edge fallback; which A/B arm), the shadow's label and the true
label once feedback came back. Read from the feedback store's memory of recent predictions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from contracts.errors import NotFoundError
from edge_agent.feedback import FeedbackStore

__all__ = ["prediction_lineage"]


def prediction_lineage(feedback: FeedbackStore, prediction_id: str) -> dict[str, Any]:
    """The lineage of one prediction; NotFoundError when it was not made here or is forgotten."""
    remembered = feedback.get(prediction_id)
    if remembered is None:
        raise NotFoundError(
            f"prediction id '{prediction_id}' is unknown here: it was made on another device, before the agent "
            "restarted, or more than feedback_capacity predictions ago"
        )
    manifest = remembered.model.manifest
    answer: dict[str, Any] = {
        "prediction_id": prediction_id,
        "made_at": datetime.fromtimestamp(remembered.at, UTC).isoformat(timespec="milliseconds"),
        "label": remembered.label,
        "answered_by": remembered.answered_by,
        "answer": remembered.label if remembered.answer is None else remembered.answer,
        "cloud_model": remembered.cloud_model,
        "actual": remembered.actual,
        "model": {
            "name": manifest.name,
            "version": manifest.version,
            "onnx_sha256": manifest.onnx.sha256,
            "bundle": remembered.model.bundle.path.name,
            "created_at": manifest.created_at,
        },
        "lineage": manifest.lineage.model_dump(),
        "shadow": None,
        "arm": remembered.arm,
    }
    if remembered.shadow is not None:
        shadow = remembered.shadow.manifest
        answer["shadow"] = {"model": shadow.ref, "label": remembered.shadow_label, "run_id": shadow.lineage.run_id}
    return answer

"""Feedback: the true label of an earlier prediction, counted for the model version (and A/B arm, and shadow)
that made it, then kept for lineage and, with the opt-in feedback rows, sent to the cloud with its fields.

A label that is not a class of the model is refused (422 naming `label`) and the prediction is put back, so a
corrected label can still be sent; an unknown or forgotten prediction id is a 404.
"""

from __future__ import annotations

from typing import Any

from contracts.errors import NotFoundError, SchemaError
from edge_agent.feedback import FeedbackStore
from edge_agent.feedback_rows import FeedbackRowSink

__all__ = ["record_feedback"]


def record_feedback(
    feedback: FeedbackStore, row_sink: FeedbackRowSink | None, prediction_id: str, actual: Any
) -> dict[str, Any]:
    """Count the true label of an earlier prediction; the answer says whether the prediction was right."""
    remembered = feedback.pop(prediction_id)
    if remembered is None:
        raise NotFoundError(
            f"prediction id '{prediction_id}' is unknown: it was never made here, already has feedback, "
            "or is older than the last feedback_capacity predictions (or the agent restarted)"
        )
    loaded = remembered.model
    classes = loaded.class_keys
    if str(actual) not in classes:
        feedback.restore(prediction_id, remembered)
        raise SchemaError(f"label {actual!r} is not a class of the model (classes: {', '.join(classes)})", "label")
    if loaded.counter is not None:
        if remembered.arm is not None:
            loaded.counter.observe_arm_feedback(remembered.arm, actual, remembered.label)
        if remembered.arm != "challenger":  # the window's own confusion is the champion's
            loaded.counter.observe_feedback(actual, remembered.label)
        if remembered.shadow is not None:
            loaded.counter.observe_shadow_feedback(actual, remembered.shadow_label)
    feedback.answered(prediction_id, remembered, actual)
    if row_sink is not None:
        row_sink.add(prediction_id, remembered, actual)
    manifest = loaded.manifest
    answer = {
        "prediction_id": prediction_id,
        "predicted": remembered.label,
        "actual": actual,
        "correct": str(actual) == str(remembered.label),
        "model": manifest.name,
        "model_version": manifest.version,
    }
    if remembered.arm is not None:
        answer["arm"] = remembered.arm
    return answer

"""Hybrid inference, the answering side: records the edge model is unsure of (max probability under the
threshold) are answered by the cloud within the deadline (edge_agent/hybrid.py asks it), else by the edge model
(`edge_fallback`). Each answer says who gave it (`answered_by`), the feedback store remembers it for lineage,
and the telemetry window counts them. An A/B challenger's answers stay its own: the cloud runs the champion's
version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edge_agent.ab_split import KeyFields
from edge_agent.feedback import FeedbackStore
from edge_agent.hybrid import HybridClient
from edge_agent.loaded import PredictionBatch

__all__ = ["resolve_hybrid"]


async def resolve_hybrid(
    hybrid: HybridClient,
    batch: PredictionBatch,
    records: Sequence[Mapping[str, Any]],
    *,
    feedback: FeedbackStore,
    key_fields: KeyFields,
) -> PredictionBatch:
    """`batch` with the cloud's answers in place of the edge model's unsure ones (changed in place)."""
    records = key_fields.strip(records, batch.model.feature_names)  # the cloud checks the schema too
    predictions = batch.predictions
    low = [
        i
        for i, p in enumerate(predictions)
        if max(p["probabilities"].values()) < hybrid.threshold and p.get("arm") != "challenger"
    ]
    counts = {"edge": len(predictions) - len(low)}
    for prediction in predictions:
        prediction["answered_by"] = "edge"
    if low:
        manifest = batch.model.manifest
        answers = await hybrid.ask(manifest.name, manifest.version, [records[i] for i in low])
        source = "edge_fallback" if answers is None else "cloud"
        counts[source] = len(low)
        for position, index in enumerate(low):
            prediction = predictions[index]
            prediction["answered_by"] = source
            if answers is None:
                feedback.annotate(prediction["prediction_id"], answered_by=source)
                continue
            answer, cloud_model = answers[0][position], answers[1]
            prediction["edge_label"] = prediction["label"]
            prediction["label"] = answer["label"]
            prediction["probabilities"] = answer["probabilities"]
            prediction["cloud_model"] = cloud_model
            feedback.annotate(
                prediction["prediction_id"], answered_by=source, answer=answer["label"], cloud_model=cloud_model
            )
    if batch.model.counter is not None:
        batch.model.counter.observe_answers(counts)
    return batch

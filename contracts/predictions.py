"""The answer to a prediction request, whichever transport carried it: `POST /v1/predict` on the agent's REST API
and the MQTT request/response topic `edgeloop/v1/devices/{device}/predict` (docs/mqtt.md) answer the same body.

One record in, a `SinglePrediction` out; a batch (a list or `{"records": [...]}`) in, a `BatchPrediction` out.
An error answers a `contracts.problem.Problem` instead. The agent's OpenAPI document and docs/schemas are built
from these models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["BatchPrediction", "Prediction", "SinglePrediction"]


class Prediction(BaseModel):
    prediction_id: str
    label: int | str
    probabilities: dict[str, float]
    model_version: int | None = Field(default=None, description="A/B split only: the version that answered.")
    arm: Literal["champion", "challenger"] | None = Field(
        default=None, description="A/B split only: the arm that answered this record."
    )


class SinglePrediction(Prediction):
    model: str
    model_version: int


class BatchPrediction(BaseModel):
    model: str
    model_version: int
    predictions: list[Prediction]

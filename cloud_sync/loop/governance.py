"""What explains a model version, read from the signed manifest the bundle server stores: for auditors.

    GET /v1/bundles/{name}/{version}/explanations   (viewer, api/routes/bundles.py)   explanations(manifest)

Two facts per version: the trainer's global permutation importance (`Manifest.importance`: the metric, the
rows and repeats, and each input feature's mean drop +- std, most important first) and whether the edge agent
can explain single predictions (`Manifest.explainer`: a linear block for logistic regression, answered by
POST /v1/explain on the device; tree ensembles have none, and the line says why and what to read instead).
The dashboard's models page shows the same dict per version (`/v1/dashboard/models`, key `explanations`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from contracts.manifest import GlobalImportance, Manifest, why_no_explanation

__all__ = ["EXPLAIN_ROUTE", "Explanations", "PerPrediction", "explanations"]

EXPLAIN_ROUTE = "POST /v1/explain"
"""The edge agent's route for per-prediction contributions (edge_agent/explain.py)."""


class PerPrediction(BaseModel):
    """Whether a device can split one prediction into per-feature contributions, and where."""

    available: bool
    kind: Literal["linear"] | None = None
    link: Literal["logistic", "softmax"] | None = None
    route: str | None = Field(default=None, description="Where to ask (on the device), when available")
    note: str = Field(description="One line for people: how to get explanations, or why there are none")


class Explanations(BaseModel):
    """Governance facts of one bundle version, read from its signed manifest."""

    model: str
    version: int
    estimator: str
    importance: GlobalImportance | None = Field(
        description="Global permutation importance on held-out rows; null for bundles made before it existed"
    )
    per_prediction: PerPrediction


def per_prediction(manifest: Manifest) -> PerPrediction:
    """From the manifest's `explainer` block; the notes say what the agent itself answers (edge_agent/explain.py)."""
    block = manifest.explainer
    if block is not None:
        return PerPrediction(
            available=True,
            kind=block.kind,
            link=block.link,
            route=EXPLAIN_ROUTE,
            note=f"yes: linear contributions per feature ({block.link} link), {EXPLAIN_ROUTE} on the device "
            "(or edgeloop explain on a workstation)",
        )
    note = f"no: {why_no_explanation(manifest)}"
    return PerPrediction(available=False, note=note)


def explanations(manifest: Manifest) -> Explanations:
    return Explanations(
        model=manifest.name,
        version=manifest.version,
        estimator=manifest.lineage.estimator,
        importance=manifest.importance,
        per_prediction=per_prediction(manifest),
    )

"""The cloud scoring endpoint for hybrid inference: `POST /v1/score` (viewer token).

A device sends the records its own model is unsure of, naming the model and version it serves; the cloud
answers with a bundle from its registry: the one `score_bundles` maps that model name to (a larger model,
`NAME/VERSION` or `NAME` for its newest version), else the very version the device serves. Scoring goes
through `contracts.runtime.OnnxModel`, the same runtime as on the device; sessions are cached per bundle.

    POST /v1/score {"model": "machine-failure", "version": 2, "records": [{...}]}
    -> {"model": "machine-failure-large", "version": 1, "predictions": [{"label": 1, "probabilities": {...}}]}
"""

from __future__ import annotations

import threading
from typing import Any

from pydantic import BaseModel, Field

from cloud_sync.store.bundles import BundleInfo, BundleRegistry
from contracts.bundle import load_bundle
from contracts.errors import NotFoundError
from contracts.runtime import OnnxModel

__all__ = ["ScoreRequest", "Scorer"]

MAX_RECORDS = 1000


class ScoreRequest(BaseModel):
    model: str = Field(min_length=1, description="Name of the model the device serves")
    version: int | None = Field(default=None, ge=1, description="Its version (default: the newest on the server)")
    records: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_RECORDS)


class Scorer:
    def __init__(self, registry: BundleRegistry, score_bundles: dict[str, str] | None = None) -> None:
        self.registry = registry
        self.score_bundles = dict(score_bundles or {})
        self._lock = threading.Lock()
        self._models: dict[tuple[str, int, str], OnnxModel] = {}

    def _pick(self, name: str, version: int | None) -> BundleInfo:
        target = self.score_bundles.get(name)
        if target:
            name, _, number = target.partition("/")
            version = int(number) if number else None
        if version is not None:
            return self.registry.get(name, version)
        versions = [info for info in self.registry.all() if info.name == name]
        if not versions:
            raise NotFoundError(f"no bundle of model {name!r} on the bundle server to score with")
        return versions[-1]

    def model(self, name: str, version: int | None) -> OnnxModel:
        info = self._pick(name, version)
        key = (info.name, info.version, info.manifest.onnx.sha256)
        with self._lock:
            cached = self._models.get(key)
        if cached is None:
            keys = self.registry.trusted()
            bundle = load_bundle(info.path, keys, keys is not None)
            cached = OnnxModel.load(bundle, intra_op_threads=0)
            with self._lock:
                self._models[key] = cached
        return cached

    def score(self, request: ScoreRequest) -> dict[str, Any]:
        model = self.model(request.model, request.version)
        result = model.predict_records(request.records, allow_extra=True)
        keys = [str(value) for value in model.manifest.classes]
        labels = result.labels.tolist()
        return {
            "model": model.manifest.name,
            "version": model.manifest.version,
            "predictions": [
                {"label": label, "probabilities": dict(zip(keys, row, strict=True))}
                for label, row in zip(labels, result.probabilities.tolist(), strict=True)
            ],
        }

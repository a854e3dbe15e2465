"""JSON schema of one input record, built from a manifest, for the OpenAPI docs of /v1/predict.

Categorical features list the training categories as examples, not as an enum: an unseen category is
accepted and predicted (the pipeline ignores it) and later counted as unseen for drift.
"""

from __future__ import annotations

from typing import Any

from contracts.manifest import Manifest

__all__ = ["record_schema"]


def record_schema(manifest: Manifest | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(schema, example record) for the model being served; a generic object when none is loaded."""
    if manifest is None:
        generic = {"type": "object", "additionalProperties": {"type": ["number", "string", "null"]}}
        return generic, None
    properties: dict[str, Any] = {}
    for spec in manifest.inputs:
        kind = "number" if spec.kind == "numeric" else "string"
        prop: dict[str, Any] = {"type": [kind, "null"] if spec.nullable else kind}
        if spec.kind == "categorical" and spec.categories:
            prop["examples"] = spec.categories
            prop["description"] = "Seen in training: " + ", ".join(spec.categories) + " (others are accepted)."
        properties[spec.name] = prop
    schema = {
        "type": "object",
        "title": f"Record of {manifest.name} v{manifest.version}",
        "properties": properties,
        "required": [spec.name for spec in manifest.inputs],
        "additionalProperties": False,
    }
    example = dict(manifest.golden_samples[0].inputs) if manifest.golden_samples else None
    return schema, example

"""Write the JSON Schemas of the contract's messages and manifest to a directory (kept in docs/schemas).

    python -m contracts.schemas --out docs/schemas

A test fails when the committed schemas differ from the models, so the docs stay true.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
from pydantic import BaseModel

from contracts.keyset import KeySetMessage
from contracts.manifest import Manifest
from contracts.messages import CloudAck, DesiredState, DeviceEvent, DeviceStatus, FeedbackRows, ReportedState
from contracts.predictions import BatchPrediction, SinglePrediction
from contracts.problem import Problem
from contracts.telemetry import TelemetryWindow

__all__ = ["MODELS", "render_schemas"]

MODELS: dict[str, type[BaseModel]] = {
    "manifest": Manifest,
    "desired-state": DesiredState,
    "reported-state": ReportedState,
    "device-status": DeviceStatus,
    "device-event": DeviceEvent,
    "telemetry-window": TelemetryWindow,
    "feedback-rows": FeedbackRows,
    "cloud-ack": CloudAck,
    "key-set": KeySetMessage,
    "prediction": SinglePrediction,
    "prediction-batch": BatchPrediction,
    "problem": Problem,
}


def render_schemas() -> dict[str, bytes]:
    return {
        f"{name}.v1.schema.json": orjson.dumps(model.model_json_schema(), option=orjson.OPT_INDENT_2) + b"\n"
        for name, model in MODELS.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the contract's JSON Schemas.")
    parser.add_argument("--out", type=Path, default=Path("docs/schemas"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, content in render_schemas().items():
        (args.out / name).write_bytes(content)


if __name__ == "__main__":
    main()

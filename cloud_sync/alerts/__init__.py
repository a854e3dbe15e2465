"""Alert rules over the fleet's telemetry, device status and rollouts, and their evaluator."""

from __future__ import annotations

__all__: list[str] = []

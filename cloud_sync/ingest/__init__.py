"""The cloud's MQTT link: the telemetry ingest (subscriber, row writer) and the outgoing publisher."""

from __future__ import annotations

__all__: list[str] = []

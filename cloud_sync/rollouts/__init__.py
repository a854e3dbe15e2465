"""Staged rollouts: the controller, the canary checks, desired states, device overrides, status, and modes."""

from __future__ import annotations

__all__: list[str] = []

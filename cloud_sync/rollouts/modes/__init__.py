"""How an active rollout advances in each mode (serving canary, shadow canary, A/B test)."""

from __future__ import annotations

__all__: list[str] = []

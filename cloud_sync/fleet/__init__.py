"""Fleet queries and statistics, and the simulated devices used by tests and `bench/`."""

from __future__ import annotations

__all__: list[str] = []

"""Route modules of the cloud API, mounted by `cloud_sync.api.app`."""

from __future__ import annotations

__all__: list[str] = []

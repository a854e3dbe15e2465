"""The fleet dashboard, served by `edgeloop cloud` on the API's port: the page and its queries (`routes.py`),
the read models (`queries.py`), live updates over server-sent events (`live.py`), the static files."""

from __future__ import annotations

__all__: list[str] = []

"""The cloud's REST API: the FastAPI app (`app.py`) and its route modules (`routes/`)."""

from __future__ import annotations

__all__: list[str] = []

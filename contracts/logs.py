"""Structured logging: one line per event, `key=value` pairs (logfmt), to stderr.

Call `configure_logging()` once in an entry point, then log with `log_event(logger, "event", key=value)`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

__all__ = ["configure_logging", "log_event"]


def _format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(ch in text for ch in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts = [f"ts={stamp}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}"]
        parts.append(f"logger={record.name}")
        parts.append(f"event={_format_value(record.getMessage())}")
        parts.extend(f"{key}={_format_value(value)}" for key, value in fields.items())
        if record.exc_info and os.environ.get("EDGELOOP_DEBUG"):
            parts.append(f"exc={_format_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


def configure_logging(level: str | None = None) -> None:
    """Send edgeloop's logs to stderr as logfmt lines; level from the argument or EDGELOOP_LOG_LEVEL."""
    chosen = (level or os.environ.get("EDGELOOP_LOG_LEVEL") or "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger("edgeloop")
    root.handlers[:] = [handler]
    root.setLevel(chosen)
    root.propagate = False
    # Third-party chatter (MLflow's table migrations and "registered model" prints) stays out of the way.
    for noisy in ("mlflow", "alembic", "py4j", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with structured fields."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})

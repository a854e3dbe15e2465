"""Which MLflow tracking URI edgeloop uses, and a preflight for it, without importing mlflow.

Every command that reaches the registry (`train`, `convert`, `deploy`, `score`, `retrain`, `model-card`,
`lineage`) resolves its tracking URI here, in this order: the `--tracking-uri` flag, `EDGELOOP_TRACKING_URI`,
the `tracking_uri` of the command's config-file table (for `train` and `convert`, which have one),
`MLFLOW_TRACKING_URI` (the variable MLflow's own tools read), then a SQLite file in $EDGELOOP_HOME.

MLflow retries an unreachable server for minutes before failing with a long traceback; the trainer and
converter call `ensure_tracking_reachable` first so the user gets one line within seconds. It also makes
the parent directory of a local SQLite store.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from contracts.errors import InputError, ServiceUnavailableError
from contracts.settings import config_file, edgeloop_home, read_section

__all__ = ["default_tracking_uri", "ensure_tracking_reachable", "resolve_tracking_uri", "safe_uri"]


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI when set, else `sqlite:///$EDGELOOP_HOME/mlflow.db` (the settings' default)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{edgeloop_home() / 'mlflow.db'}"


def resolve_tracking_uri(flag: str | None = None) -> str:
    """The tracking URI for a command without its own settings class (`deploy`, `model-card`, `retrain`,
    `score`): the same order as `train`, its config-file table included."""
    if flag:
        return flag
    if from_env := os.environ.get("EDGELOOP_TRACKING_URI"):
        return from_env
    path = config_file()
    from_file = read_section(path, "train").get("tracking_uri") if path else None
    return str(from_file) if from_file else default_tracking_uri()


def safe_uri(uri: str) -> str:
    """`uri` with the password of its user info masked, for messages and logs
    (`postgresql://ml:s3cret@db/mlflow` -> `postgresql://ml:***@db/mlflow`)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    user = urllib.parse.quote(parts.username or "", safe="")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def ensure_tracking_reachable(uri: str, timeout: float = 5.0) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return
    if uri.startswith(("http://", "https://")):
        # Fail fast instead of MLflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        # MLflow writes "🏃 View run ... / 🧪 View experiment ..." to stdout after each run against a server; our
        # commands print their own one line (run id and where), and stdout may be a pipe a script parses.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                response.read(64)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise ServiceUnavailableError(f"tracking server {safe_uri(uri)} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceUnavailableError(
                f"tracking server {safe_uri(uri)} is unreachable ({reason}); start it or pass another --tracking-uri"
            ) from None
        return
    if uri.startswith(("postgresql", "mysql", "sqlite:", "databricks")):
        return
    if uri.startswith("file:") or "://" not in uri:
        raise InputError(
            f"tracking URI {safe_uri(uri)!r}: MLflow 3 refuses plain file stores; use sqlite:///path/to/mlflow.db"
        )
    raise InputError(
        f"unsupported tracking URI {safe_uri(uri)!r}; use sqlite:///..., http(s)://... or postgresql://..."
    )

"""Which extra installs each optional package, and the one-line error when a feature needs a missing one.

The base install is the edge agent; the extras are roles (pyproject.toml, docs/cloud.md "Install"):

    cloud   edgeloop cloud and its client commands (deploy, rollout, devices, alerts ...)   no ML library
    train   train, convert, retrain, model cards, registry references (mlflow, scikit-learn, pandas ...)
    batch   edgeloop score (pyarrow); spark adds the Spark engine
    all     every role

    except ModuleNotFoundError as exc:         # edgeloop/errors_cli.py, around every command
        missing = missing_extra(exc, "`edgeloop train`")
        if missing is None:
            raise
        raise missing from None               # error: `edgeloop train` needs mlflow, ... 'edgeloop[train]'
"""

from __future__ import annotations

from contracts.errors import MissingExtra

__all__ = ["EXTRA_OF", "missing_extra"]

# import name -> (the name pip knows it by, the extra that installs it)
EXTRA_OF: dict[str, tuple[str, str]] = {
    "mlflow": ("mlflow", "train"),
    "sklearn": ("scikit-learn", "train"),
    "skl2onnx": ("skl2onnx", "train"),
    "onnx": ("onnx", "train"),
    "pandas": ("pandas", "train"),
    "pyarrow": ("pyarrow", "batch"),
    "numba": ("numba", "batch"),
    "pyspark": ("pyspark", "spark"),
    "sqlalchemy": ("SQLAlchemy", "cloud"),
    "psycopg": ("psycopg", "cloud"),
    "httpx": ("httpx", "cloud"),
    "alembic": ("alembic", "cloud"),
}


def missing_extra(exc: ModuleNotFoundError, feature: str) -> MissingExtra | None:
    """The error saying which extra installs the module `exc` did not find, or None for a module of no extra
    (a broken install, not a missing role)."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRA_OF:
        return None
    package, extra = EXTRA_OF[top]
    return MissingExtra(f"{feature} needs {package}, which is not installed: pip install 'edgeloop[{extra}]'")

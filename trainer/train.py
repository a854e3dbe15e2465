"""Train one model end to end: load, split, fit, evaluate on held-out rows, profile, log and register.

    result = train_model(Path("data/machines.csv"), target="failure_24h", name="machine-failure", kind="rf")

MLflow gets params, held-out metrics, the model (signature + input example), the data set (source, hash,
rows), the code version, and edgeloop's own artifacts under `edgeloop/`: the feature schema, the reference
profile for drift, the held-out rows (used by the converter's parity gate), the permutation importance of
each input feature on held-out rows (`permutation_importance.json`, carried into the bundle) and a model card. The first
version of a name gets alias `champion`, later versions `challenger`.
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from sklearn.model_selection import train_test_split

from contracts.drift import categorical_profile, numeric_profile
from contracts.errors import InputError
from contracts.logs import log_event
from contracts.manifest import MISSING_CATEGORY, FeatureSpec, GlobalImportance
from contracts.tracking import ensure_tracking_reachable
from trainer.data import TrainingData, load_training_data
from trainer.evaluate import evaluate
from trainer.importance import permutation_importance_of
from trainer.model_card import render_model_card
from trainer.pipeline import build_pipeline
from trainer.settings import TrainSettings

__all__ = ["ARTIFACT_DIR", "TrainResult", "code_version", "train_model"]

logger = logging.getLogger("edgeloop.trainer")
ARTIFACT_DIR = "edgeloop"
# skops refuses to load types it does not know; we trust exactly the sklearn/numpy internals the model
# needs (e.g. sklearn.tree._tree.Tree) and refuse anything else rather than fall back to pickle.
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class TrainResult:
    name: str
    version: str
    alias: str
    run_id: str
    metrics: dict[str, float]
    tracking_uri: str


def code_version() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    if not sha:
        from importlib.metadata import version

        return f"edgeloop-{version('edgeloop')}"
    return f"git:{sha}{'-dirty' if dirty else ''}"


def _feature_specs(train_x: pd.DataFrame, data: TrainingData) -> list[FeatureSpec]:
    """The input schema; categories are those of the training rows (what the one-hot encoder knows)."""
    specs = []
    for column in train_x.columns:
        if column in data.numeric:
            specs.append(FeatureSpec(name=column, kind="numeric"))
        else:
            categories = sorted({value for value in train_x[column] if value != MISSING_CATEGORY})
            specs.append(FeatureSpec(name=column, kind="categorical", categories=categories))
    return specs


def _reference_profile(train_x: pd.DataFrame, data: TrainingData) -> dict[str, dict]:
    profile = {}
    for column in train_x.columns:
        if column in data.numeric:
            profile[column] = numeric_profile(train_x[column].to_numpy()).model_dump()
        else:
            profile[column] = categorical_profile(list(train_x[column])).model_dump()
    return profile


def _trusted_types(model: object) -> list[str]:
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    refused = [name for name in untrusted if not name.startswith(_TRUSTED_PREFIXES)]
    if refused:
        raise InputError(f"refusing to serialise unknown types with skops: {', '.join(refused)}")
    return untrusted


def _model_requirements() -> list[str]:
    """The model's pip requirements, pinned to what is installed: what it needs to load, stated up front.

    MLflow would otherwise infer them by loading the model in a subprocess (5-10 s per `train`).
    """
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("scikit-learn", "skops", "numpy", "scipy", "pandas")]


def train_model(
    data_path: Path,
    target: str,
    name: str,
    kind: str = "rf",
    ignore: list[str] | None = None,
    settings: TrainSettings | None = None,
) -> TrainResult:
    settings = settings or TrainSettings()
    if not _NAME.match(name):
        raise InputError(
            f"model name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (it appears in references and topics)"
        )
    build_pipeline(kind, [], [])  # an unknown family fails here, before any data is read
    ensure_tracking_reachable(settings.tracking_uri)
    data = load_training_data(data_path, target, ignore)
    log_event(
        logger,
        "data loaded",
        source=data.source,
        rows=len(data.features),
        numeric=len(data.numeric),
        categorical=len(data.categorical),
        dropped_rows_without_target=data.dropped_rows,
    )
    try:
        train_x, test_x, train_y, test_y = train_test_split(
            data.features,
            data.target,
            test_size=settings.test_size,
            stratify=data.target,
            random_state=settings.seed,
        )
    except ValueError as exc:
        raise InputError(f"cannot make a stratified held-out split: {exc}") from None
    for column in data.numeric + data.categorical:
        values = train_x[column]
        if (values.isna() | (values == MISSING_CATEGORY)).all():
            raise InputError(f"column '{column}' has no values in the training rows; drop it with --ignore {column}")
    pipeline = build_pipeline(kind, data.numeric, data.categorical, settings.seed)
    started = time.perf_counter()
    pipeline.fit(train_x, train_y)
    fit_seconds = time.perf_counter() - started
    classes = [cls.item() if hasattr(cls, "item") else cls for cls in pipeline.classes_]
    probabilities = pipeline.predict_proba(test_x)
    labels = pipeline.predict(test_x)
    metrics = evaluate(test_y, labels, probabilities, classes)
    rounded: dict[str, Any] = {key: round(value, 4) for key, value in metrics.items()}
    log_event(logger, "model fitted", estimator=kind, seconds=round(fit_seconds, 2), **rounded)
    predicted_share = {str(c): float(np.mean(labels == c)) for c in classes}
    importance = permutation_importance_of(pipeline, test_x, test_y, classes, settings.seed)
    return _log_to_mlflow(
        settings, data, pipeline, kind, name, train_x, test_x, test_y, classes, metrics, predicted_share, importance
    )


def _log_to_mlflow(
    settings: TrainSettings,
    data: TrainingData,
    pipeline: object,
    kind: str,
    name: str,
    train_x: pd.DataFrame,
    test_x: pd.DataFrame,
    test_y: pd.Series,
    classes: list,
    metrics: dict[str, float],
    predicted_share: dict[str, float],
    importance: GlobalImportance,
) -> TrainResult:
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    # MLflow's hints about dataset sources and integer columns are advice for notebooks, not our users.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\..*")

    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if settings.tracking_uri.startswith("sqlite:"):
            settings.artifact_root.mkdir(parents=True, exist_ok=True)
            location = settings.artifact_root.resolve().as_uri() + f"/{name}"
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    version_of_code = code_version()
    specs = _feature_specs(train_x, data)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params(
            {
                "estimator": kind,
                "target": data.target.name,
                "seed": settings.seed,
                "test_size": settings.test_size,
                "train_rows": len(train_x),
                "holdout_rows": len(test_x),
                "numeric_features": ",".join(data.numeric),
                "categorical_features": ",".join(data.categorical),
            }
        )
        mlflow.log_metrics({f"holdout_{key}": value for key, value in metrics.items()})
        mlflow.set_tags(
            {
                "edgeloop.data_sha256": data.sha256,
                "edgeloop.data_source": data.source,
                "edgeloop.data_rows": str(len(data.features)),
                "edgeloop.code_version": version_of_code,
                "edgeloop.estimator": kind,
                "mlflow.source.git.commit": version_of_code,
            }
        )
        dataset = mlflow.data.from_pandas(  # type: ignore[attr-defined]
            pd.concat([data.features, data.target], axis=1), source=data.source, name=Path(data.source).name
        )
        mlflow.log_input(dataset, context="training")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            schema = {
                "inputs": [spec.model_dump() for spec in specs],
                "target": str(data.target.name),
                "classes": classes,
            }
            (folder / "feature_schema.json").write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2))
            (folder / "reference_profile.json").write_bytes(
                orjson.dumps(_reference_profile(train_x, data), option=orjson.OPT_INDENT_2)
            )
            (folder / "prediction_profile.json").write_bytes(orjson.dumps(predicted_share))
            holdout = test_x.copy()
            holdout[str(data.target.name)] = test_y
            holdout.to_parquet(folder / "holdout.parquet", index=False)
            (folder / "permutation_importance.json").write_bytes(
                orjson.dumps(importance.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
            )
            card = render_model_card(name, kind, data, metrics, classes, version_of_code, run.info.run_id, importance)
            (folder / "model_card.md").write_text(card)
            mlflow.log_artifacts(str(folder), artifact_path=ARTIFACT_DIR)
        example = train_x.head(5)
        signature = infer_signature(example, pipeline.predict(example))  # type: ignore[attr-defined]
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            serialization_format="skops",
            skops_trusted_types=_trusted_types(pipeline),
            signature=signature,
            input_example=example,
            pip_requirements=_model_requirements(),
        )
        registered = mlflow.register_model(info.model_uri, name)
    versions = client.search_model_versions(f"name='{name}'")
    alias = "champion" if len(versions) == 1 else "challenger"
    client.set_registered_model_alias(name, alias, registered.version)
    client.set_model_version_tag(name, registered.version, "edgeloop.estimator", kind)
    log_event(logger, "model registered", name=name, version=registered.version, alias=alias, run_id=run.info.run_id)
    return TrainResult(
        name=name,
        version=str(registered.version),
        alias=alias,
        run_id=run.info.run_id,
        metrics=metrics,
        tracking_uri=settings.tracking_uri,
    )

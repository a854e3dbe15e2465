"""Issue 2's "done when": a data set the project has never seen goes through `edgeloop train`,
`edgeloop convert NAME@champion` and `edgeloop predict` on the command line, from CSV and from Parquet.

The data set is generated here: a three-class string target, string categories with missing values (one
of them uses the literal value "missing"), a bool column, an integer column and numbers with NaN.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from contracts.bundle import load_bundle
from contracts.runtime import OnnxModel
from contracts.signing import load_public_key
from converter.parity import records_of
from tests.cli_helpers import Cli, CliResult, run_edgeloop

CLASSES = ["high", "low", "mid"]


def make_sensors(rows: int = 900, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue", "missing"], rows).astype(object)
    colour[rng.random(rows) < 0.1] = None
    shape = rng.choice(["disc", "cube", "cone"], rows).astype(object)
    shape[rng.random(rows) < 0.05] = None
    flag = rng.random(rows) < 0.4
    level = rng.normal(0, 1, rows)
    level[rng.random(rows) < 0.08] = np.nan
    count = rng.integers(0, 100, rows)
    score = np.nan_to_num(level) + (colour == "red") * 1.5 - flag * 1.0 + count / 50 + rng.normal(0, 0.5, rows)
    y = np.where(score > 1.5, "high", np.where(score > 0.3, "mid", "low"))
    return pd.DataFrame({"level": level, "count": count, "colour": colour, "shape": shape, "flag": flag, "y": y})


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Cli:
    def run(*args: str) -> CliResult:
        result = run_edgeloop(list(args), monkeypatch, capsys, tmp_path / "home")
        assert result.exit_code == 0, result.stderr
        assert result.errors == [] and "Traceback" not in result.stderr
        return result

    return run


def test_unseen_dataset_through_the_cli(cli: Cli, tmp_path: Path) -> None:
    home = tmp_path / "home"
    frame = make_sensors()
    csv, parquet = tmp_path / "other.csv", tmp_path / "other.parquet"
    frame.to_csv(csv, index=False)
    frame.to_parquet(parquet, index=False)

    # CSV, default tracking store under $EDGELOOP_HOME, gradient boosting.
    trained = cli("train", "--data", str(csv), "--target", "y", "--name", "sensors", "--model", "gb")
    assert "registered sensors version 1 as @champion" in trained.stdout
    out = tmp_path / "bundles" / "sensors"
    converted = cli("convert", "sensors@champion", "--out", str(out))
    assert "label mismatches" in converted.stdout and (home / "mlflow.db").is_file()
    public_key = home / "keys" / "edgeloop-signing.pub"
    predicted = cli("predict", "--bundle", str(out), "--data", str(csv), "--rows", "8", "--public-key", str(public_key))
    assert any(label in predicted.stdout for label in CLASSES)

    bundle = load_bundle(out, load_public_key(public_key))
    manifest = bundle.manifest
    assert manifest.classes == CLASSES and manifest.target == "y"
    kinds = {spec.name: spec.kind for spec in manifest.inputs}
    assert kinds == {
        "level": "numeric",
        "count": "numeric",
        "colour": "categorical",
        "shape": "categorical",
        "flag": "numeric",
    }
    colour = next(spec for spec in manifest.inputs if spec.name == "colour")
    assert colour.categories == ["blue", "green", "missing", "red"]
    assert manifest.reference_profile["colour"].missing_rate > 0
    assert manifest.reference_profile["level"].missing_rate > 0
    assert any(value is None for sample in manifest.golden_samples for value in sample.inputs.values())

    # The literal category "missing" and a missing value stay two different things inside the pipeline.
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    sklearn_model = mlflow.sklearn.load_model("models:/sensors/1")
    encoder = sklearn_model.named_steps["preprocess"].named_transformers_["categorical"].named_steps["onehot"]
    colour_categories = list(encoder.categories_[0])
    assert "missing" in colour_categories and "__missing__" in colour_categories

    # New records, as a device sends them: gaps, an unseen category, bools as 0/1 numbers.
    fresh = make_sensors(rows=50, seed=99).drop(columns=["y"])
    fresh["flag"] = fresh["flag"].astype(float)
    fresh.loc[0, "colour"] = "purple"
    features = fresh.assign(
        colour=fresh["colour"].fillna(""), shape=fresh["shape"].fillna(""), count=fresh["count"].astype(float)
    )
    result = OnnxModel.load(bundle).predict_records(records_of(features, manifest.inputs))
    assert result.labels.tolist() == sklearn_model.predict(features).tolist()
    assert np.max(np.abs(result.probabilities - sklearn_model.predict_proba(features))) <= 1e-5

    # Parquet input, another family: version 2 becomes the challenger and converts the same way.
    trained = cli("train", "--data", str(parquet), "--target", "y", "--name", "sensors", "--model", "rf")
    assert "registered sensors version 2 as @challenger" in trained.stdout
    out2 = tmp_path / "bundles" / "sensors-v2"
    cli("convert", "sensors@challenger", "--out", str(out2))
    cli("predict", "--bundle", str(out2), "--data", str(csv), "--rows", "3", "--public-key", str(public_key))
    second = load_bundle(out2, load_public_key(public_key)).manifest
    assert second.version == 2 and second.lineage.estimator == "rf" and second.classes == CLASSES
    assert second.lineage.data_source.endswith("other.parquet")

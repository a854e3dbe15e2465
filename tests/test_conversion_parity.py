"""Train -> register -> convert on real MLflow (temp SQLite) and real skl2onnx/onnxruntime, for every
estimator family on numeric-only and on mixed data (numeric + categorical + missing values).

Parity is re-checked here independently of the converter's own gate: the registered sklearn model and the
signed bundle are loaded back and compared on the held-out rows and on edge-case records (missing values,
unseen categories, extreme numbers) fed the way a device feeds them.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import orjson
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from contracts.bundle import Bundle, load_bundle
from contracts.errors import InputError, ParityCheckFailed, UnsupportedModelError
from contracts.manifest import MANIFEST_FILE, CategoricalProfile, NumericProfile, canonical_bytes, sha256_file
from contracts.runtime import OnnxModel, encode_columns, encode_records
from contracts.signing import load_public_key
from converter.convert import convert_model
from converter.export import SUPPORTED
from converter.parity import check_parity, records_of
from converter.resolve import resolve_reference
from converter.settings import ConvertSettings
from trainer.data import file_sha256
from trainer.evaluate import evaluate
from trainer.sample_data import TARGET, make_machines
from trainer.settings import TrainSettings
from trainer.train import train_model

FAMILIES = ("rf", "logreg", "gb")  # trained in this order: versions 1, 2, 3 of each name
DATASETS = ("numeric", "mixed")
TOLERANCE = 1e-5
CATEGORICAL = ["machine_type", "firmware", "site"]


@dataclass(frozen=True)
class Converted:
    name: str
    version: int
    kind: str
    data: Path
    run_id: str
    bundle: Bundle


@dataclass(frozen=True)
class ParityStore:
    tracking_uri: str
    keys_dir: Path
    root: Path
    models: dict[tuple[str, str], Converted]

    def settings(self, **overrides: object) -> ConvertSettings:
        return ConvertSettings(tracking_uri=self.tracking_uri, keys_dir=self.keys_dir, **overrides)  # type: ignore[arg-type]

    def client(self) -> MlflowClient:
        mlflow.set_tracking_uri(self.tracking_uri)
        return MlflowClient(self.tracking_uri)


def _write_datasets(root: Path) -> dict[str, Path]:
    frame = make_machines(rows=1000, seed=11).drop(columns=["reading_id"])
    numeric = frame.drop(columns=CATEGORICAL).dropna()  # numbers only, no gaps
    mixed = frame  # numbers, categories, ~3 % missing readings and firmware tags
    assert mixed.isna().any().any() and not numeric.isna().any().any()
    paths = {"numeric": root / "numeric.csv", "mixed": root / "mixed.parquet"}
    numeric.to_csv(paths["numeric"], index=False)
    mixed.to_parquet(paths["mixed"], index=False)
    return paths


@pytest.fixture(scope="module")
def store(workspace: Path) -> ParityStore:
    root = workspace / "parity"
    root.mkdir()
    tracking = f"sqlite:///{workspace / 'mlflow.db'}"
    keys = workspace / "keys"
    paths = _write_datasets(root)
    models: dict[tuple[str, str], Converted] = {}
    for dataset in DATASETS:
        name = f"parity-{dataset}"
        for kind in FAMILIES:
            result = train_model(
                paths[dataset],
                TARGET,
                name,
                kind,
                settings=TrainSettings(tracking_uri=tracking, artifact_root=workspace / "artifacts"),
            )
            out = root / "bundles" / f"{name}-{kind}"
            bundle = convert_model(
                f"{name}/{result.version}", out, ConvertSettings(tracking_uri=tracking, keys_dir=keys)
            )
            models[(dataset, kind)] = Converted(name, int(result.version), kind, paths[dataset], result.run_id, bundle)
    return ParityStore(tracking, keys, root, models)


def _holdout(store: ParityStore, run_id: str, into: Path) -> pd.DataFrame:
    local = store.client().download_artifacts(run_id, "edgeloop/holdout.parquet", str(into))
    return pd.read_parquet(local)


def _edge_cases(features: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """Rows a device will send: missing numbers, missing and never-seen categories, extreme values."""
    base = features.head(6).copy().reset_index(drop=True)
    numeric = [c for c in base.columns if c not in categorical]
    base.loc[0, numeric] = np.nan
    base.loc[1, numeric[0]] = 1e6
    base.loc[2, numeric[-1]] = -1e6
    for column in categorical:
        base.loc[3, column] = ""
        base.loc[4, column] = "never-seen-in-training"
    return base


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_onnx_matches_sklearn(store: ParityStore, dataset: str, kind: str, tmp_path: Path) -> None:
    converted = store.models[(dataset, kind)]
    manifest = converted.bundle.manifest
    sklearn_model = mlflow.sklearn.load_model(f"models:/{converted.name}/{converted.version}")
    onnx_model = OnnxModel.load(
        load_bundle(converted.bundle.path, load_public_key(store.keys_dir / "edgeloop-signing.pub"))
    )
    holdout = _holdout(store, converted.run_id, tmp_path)
    features = holdout[manifest.feature_names]

    # Columnar path (batch scoring), on every held-out row.
    columns = {name: features[name].to_numpy() for name in manifest.feature_names}
    result = onnx_model.predict_feed(encode_columns(columns, manifest.inputs))
    expected = sklearn_model.predict_proba(features)
    assert (result.labels == sklearn_model.predict(features)).all()
    holdout_diff = float(np.max(np.abs(result.probabilities - expected)))
    assert holdout_diff <= TOLERANCE
    assert result.probabilities.shape == (len(features), len(manifest.classes))
    assert list(sklearn_model.classes_) == manifest.classes

    # Record path (the edge agent's JSON), on edge cases.
    categorical = [spec.name for spec in manifest.inputs if spec.kind == "categorical"]
    probe = _edge_cases(features, categorical)
    records = records_of(probe, manifest.inputs)
    assert any(value is None for record in records for value in record.values())
    from_records = onnx_model.predict_records(records)
    assert (from_records.labels == sklearn_model.predict(probe)).all()
    assert float(np.max(np.abs(from_records.probabilities - sklearn_model.predict_proba(probe)))) <= TOLERANCE

    # The converter's own gate ran on the same rows and recorded what it measured.
    assert manifest.parity.rows == len(holdout)
    assert manifest.parity.label_mismatches == 0
    assert manifest.parity.tolerance == TOLERANCE
    assert manifest.parity.max_abs_diff == pytest.approx(holdout_diff, abs=1e-9)
    replays = {replay.runtime: replay for replay in manifest.parity.runtimes or []}
    assert sorted(replays) == ["numpy", "onnxruntime"]
    assert replays["onnxruntime"].max_abs_diff == manifest.parity.max_abs_diff
    for replay in replays.values():
        assert replay.rows == len(holdout) and replay.label_mismatches == 0
        assert replay.max_abs_diff <= TOLERANCE and replay.golden_max_abs_diff <= TOLERANCE
    print(f"{dataset}/{kind}: max |dp| {holdout_diff:.2e} on {len(holdout)} held-out rows")


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_numpy_runtime_matches_onnxruntime(store: ParityStore, dataset: str, kind: str, tmp_path: Path) -> None:
    """The same signed bundle on both backends: identical labels, max |dp| <= 1e-5, on held-out rows (columnar)
    and on edge-case records (missing numbers and categories, unseen categories, extreme values)."""
    converted = store.models[(dataset, kind)]
    manifest = converted.bundle.manifest
    reference = OnnxModel.load(converted.bundle, runtime="onnxruntime")
    ours = OnnxModel.load(converted.bundle, runtime="numpy")
    features = _holdout(store, converted.run_id, tmp_path)[manifest.feature_names]
    categorical = [spec.name for spec in manifest.inputs if spec.kind == "categorical"]
    feeds = [
        encode_columns({name: features[name].to_numpy() for name in manifest.feature_names}, manifest.inputs),
        encode_records(records_of(_edge_cases(features, categorical), manifest.inputs), manifest.inputs),
    ]
    for feed in feeds:
        expected, got = reference.predict_feed(feed), ours.predict_feed(feed)
        assert np.array_equal(got.labels, expected.labels)
        assert float(np.max(np.abs(got.probabilities - expected.probabilities))) <= TOLERANCE
    sklearn_model = mlflow.sklearn.load_model(f"models:/{converted.name}/{converted.version}")
    from_numpy = ours.predict_feed(feeds[0])
    assert (from_numpy.labels == sklearn_model.predict(features)).all()
    assert float(np.max(np.abs(from_numpy.probabilities - sklearn_model.predict_proba(features)))) <= TOLERANCE
    assert ours.check_golden_samples() <= manifest.golden_tolerance


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_golden_samples_replay(store: ParityStore, dataset: str, kind: str, tmp_path: Path) -> None:
    converted = store.models[(dataset, kind)]
    manifest = converted.bundle.manifest
    model = OnnxModel.load(converted.bundle)
    assert model.check_golden_samples() <= manifest.golden_tolerance
    assert len(manifest.golden_samples) == 12
    # Every label the model gives on held-out rows has a golden sample, so the replay checks each one.
    holdout = _holdout(store, converted.run_id, tmp_path)
    predicted = mlflow.sklearn.load_model(f"models:/{converted.name}/{converted.version}").predict(
        holdout[manifest.feature_names]
    )
    assert {sample.label for sample in manifest.golden_samples} == set(predicted.tolist())
    if dataset == "mixed":
        assert any(value is None for sample in manifest.golden_samples for value in sample.inputs.values())


@pytest.mark.parametrize("kind", FAMILIES)
def test_onnx_flavour_logged_back_and_version_tagged(store: ParityStore, kind: str) -> None:
    converted = store.models[("mixed", kind)]
    client = store.client()
    manifest = converted.bundle.manifest
    bundle_digest = hashlib.sha256(canonical_bytes(manifest)).hexdigest()
    tags = client.get_model_version(converted.name, str(converted.version)).tags
    assert tags["edgeloop.bundle_sha256"] == bundle_digest
    assert tags["edgeloop.onnx_sha256"] == manifest.onnx.sha256 == sha256_file(converted.bundle.model_path)
    run = client.get_run(converted.run_id)
    assert run.data.tags["edgeloop.bundle_sha256"] == bundle_digest
    logged = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{converted.run_id}'",
        output_format="list",
    )
    onnx_models = [model for model in logged if model.name == "onnx"]
    assert onnx_models, [model.name for model in logged]
    proto = mlflow.onnx.load_model(onnx_models[-1].model_uri)
    assert hashlib.sha256(proto.SerializeToString()).hexdigest() == manifest.onnx.sha256
    bundle_files = {Path(a.path).name for a in client.list_artifacts(converted.run_id, "edgeloop/bundle")}
    assert bundle_files == {"model.onnx", "manifest.json", "manifest.sig"}


def test_aliases_and_references(store: ParityStore) -> None:
    client = store.client()
    name = "parity-mixed"
    aliases = {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}
    assert aliases == {"champion": "1", "challenger": "3"}  # first version champion, the newest challenger
    assert resolve_reference(client, f"{name}@champion").version == 1
    assert resolve_reference(client, f"{name}@challenger").version == 3
    assert resolve_reference(client, f"{name}@latest").version == 3
    assert resolve_reference(client, f"{name}/2").run_id == store.models[("mixed", "logreg")].run_id
    by_run = resolve_reference(client, f"runs:/{store.models[('mixed', 'gb')].run_id}/model")
    assert not by_run.registered and by_run.run_id == store.models[("mixed", "gb")].run_id


def test_latest_converts_the_newest_version(store: ParityStore, tmp_path: Path) -> None:
    bundle = convert_model("parity-numeric@latest", tmp_path / "latest", store.settings())
    assert bundle.manifest.version == 3 and bundle.manifest.lineage.estimator == "gb"
    assert bundle.manifest.lineage.model_version == "3" and bundle.manifest.lineage.registered_model == "parity-numeric"


@pytest.mark.parametrize("kind", FAMILIES)
def test_run_carries_params_metrics_model_data_code_profile_and_card(
    store: ParityStore, kind: str, tmp_path: Path
) -> None:
    converted = store.models[("mixed", kind)]
    client = store.client()
    run = client.get_run(converted.run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags

    assert params["estimator"] == kind and params["target"] == TARGET and params["seed"] == "42"
    assert params["categorical_features"] == ",".join(CATEGORICAL)
    assert int(params["train_rows"]) + int(params["holdout_rows"]) == 1000
    assert int(params["holdout_rows"]) == 200  # test_size 0.2

    # Held-out metrics: recomputed here from the held-out rows the run stored, with the registered model.
    holdout = _holdout(store, converted.run_id, tmp_path)
    assert len(holdout) == 200
    model = mlflow.sklearn.load_model(f"models:/{converted.name}/{converted.version}")
    features = holdout.drop(columns=[TARGET])
    classes = list(model.classes_)
    again = evaluate(holdout[TARGET], model.predict(features), model.predict_proba(features), classes)
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert metrics[f"holdout_{key}"] == pytest.approx(again[key], abs=1e-9), key
    assert converted.bundle.manifest.lineage.metrics == pytest.approx(
        {key.removeprefix("holdout_"): value for key, value in metrics.items()}
    )

    # The model: signature and input example.
    info = mlflow.models.get_model_info(f"models:/{converted.name}/{converted.version}")
    assert info.signature is not None
    assert info.signature.inputs.input_names() == converted.bundle.manifest.feature_names
    assert info.saved_input_example_info is not None
    local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "model"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    assert isinstance(example, pd.DataFrame)
    assert list(example.columns) == converted.bundle.manifest.feature_names and len(example) == 5

    # The data set: an MLflow dataset input, plus the hash, row count and source as tags.
    assert run.inputs is not None
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == converted.data.name
    assert str(converted.data) in dataset_input.dataset.source
    assert tags["edgeloop.data_sha256"] == file_sha256(converted.data)
    assert tags["edgeloop.data_rows"] == "1000"

    # The code version.
    assert tags["edgeloop.code_version"].startswith(("git:", "edgeloop-"))
    assert tags["mlflow.source.git.commit"] == tags["edgeloop.code_version"]

    # The reference profile: every feature, and exactly what the bundle ships.
    profile_path = client.download_artifacts(converted.run_id, "edgeloop/reference_profile.json", str(tmp_path))
    profile = orjson.loads(Path(profile_path).read_bytes())
    assert set(profile) == set(converted.bundle.manifest.feature_names)
    for feature, entry in profile.items():
        parsed = (NumericProfile if entry["kind"] == "numeric" else CategoricalProfile).model_validate(entry)
        assert parsed == converted.bundle.manifest.reference_profile[feature]
    assert profile["firmware"]["missing_rate"] > 0 and profile["temperature_c"]["missing_rate"] > 0
    assert sum(profile["rpm"]["proportions"]) == pytest.approx(1.0)

    # The model card.
    card = Path(client.download_artifacts(converted.run_id, "edgeloop/model_card.md", str(tmp_path))).read_text()
    for heading in ("## Intended use", "## Data", "## Held-out metrics", "## Limitations"):
        assert heading in card
    assert f"| accuracy | {metrics['holdout_accuracy']:.4f} |" in card
    assert converted.run_id in card and file_sha256(converted.data)[:16] in card


def _log_foreign_model(store: ParityStore, name: str, model: object, source: Converted, tmp_path: Path) -> None:
    """Register `model` the way a data scientist might by hand, with edgeloop's run artifacts copied over."""
    client = store.client()
    artifacts = Path(client.download_artifacts(source.run_id, "edgeloop", str(tmp_path)))
    shutil.rmtree(artifacts / "bundle", ignore_errors=True)
    experiment = client.get_experiment_by_name(source.name)
    assert experiment is not None
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        mlflow.log_artifacts(str(artifacts), artifact_path="edgeloop")
        mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format="cloudpickle",
            registered_model_name=name,
            pip_requirements=["scikit-learn"],
        )


@pytest.mark.parametrize("culprit", ["KNeighborsClassifier", "SVC", "PowerTransformer"])
def test_unsupported_step_is_named_with_the_supported_set(store: ParityStore, culprit: str, tmp_path: Path) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import PowerTransformer, StandardScaler
    from sklearn.svm import SVC

    source = store.models[("numeric", "logreg")]
    frame = pd.read_csv(source.data)
    numeric = [c for c in frame.columns if c != TARGET]
    scale: object = PowerTransformer() if culprit == "PowerTransformer" else StandardScaler()
    estimator: object = {"KNeighborsClassifier": KNeighborsClassifier(), "SVC": SVC(probability=True)}.get(
        culprit, LogisticRegression(max_iter=500)
    )
    preprocess = ColumnTransformer([("numeric", Pipeline([("impute", SimpleImputer()), ("scale", scale)]), numeric)])
    model = Pipeline([("preprocess", preprocess), ("model", estimator)]).fit(frame[numeric], frame[TARGET])
    name = f"unsupported-{culprit.lower()}"
    _log_foreign_model(store, name, model, source, tmp_path)
    out = tmp_path / "bundles" / name
    with pytest.raises(UnsupportedModelError) as caught:
        convert_model(f"{name}/1", out, store.settings())
    message = str(caught.value)
    assert f"cannot convert {culprit}" in message
    for supported in SUPPORTED:
        assert supported in message
    assert not out.exists() and not list((tmp_path / "bundles").glob(f".{name}*"))


def test_parity_failure_at_zero_tolerance_keeps_the_old_bundle(store: ParityStore, tmp_path: Path) -> None:
    """Zero tolerance is the honest real failure: ONNX runs in float32, sklearn in float64, so the
    probabilities really differ by ~1e-7. The gate must measure it, say so, and leave the bundle alone."""
    out = tmp_path / "bundle"
    convert_model("parity-mixed/1", out, store.settings())
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(ParityCheckFailed) as caught:
        convert_model("parity-mixed/1", out, store.settings(parity_tolerance=0.0))
    failure = caught.value
    assert failure.label_mismatches == 0 and 0 < failure.max_abs_diff <= TOLERANCE and failure.tolerance == 0
    assert "parity gate failed on 200 held-out rows" in str(failure)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary directory left behind


def test_parity_gate_catches_a_different_model(store: ParityStore, tmp_path: Path) -> None:
    """What a converter bug would produce: an ONNX graph that is not the sklearn model (rf vs logreg)."""
    rf, logreg = store.models[("mixed", "rf")], store.models[("mixed", "logreg")]
    sklearn_logreg = mlflow.sklearn.load_model(f"models:/{logreg.name}/{logreg.version}")
    holdout = _holdout(store, rf.run_id, tmp_path)
    with pytest.raises(ParityCheckFailed) as caught:
        check_parity(sklearn_logreg, OnnxModel.load(rf.bundle), holdout[rf.bundle.manifest.feature_names], TOLERANCE)
    assert caught.value.max_abs_diff > 0.01 and caught.value.label_mismatches > 0


def test_negative_tolerance_is_an_input_error(store: ParityStore, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="tolerance"):
        convert_model("parity-mixed/1", tmp_path / "b", store.settings(parity_tolerance=-1e-5))
    assert not (tmp_path / "b").exists()


def test_out_that_is_not_a_bundle_is_never_replaced(store: ParityStore, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("precious")
    with pytest.raises(InputError, match="not a bundle"):
        convert_model("parity-mixed/1", project, store.settings())
    assert (project / "notes.txt").read_text() == "precious"
    existing = store.models[("mixed", "rf")].bundle.path
    assert (existing / MANIFEST_FILE).is_file()  # a bundle directory, by contrast, is replaced atomically

"""Explanations an auditor can read (issue 8): the agent's per-prediction contributions for logistic regression
equal an independent computation from the sklearn pipeline and add up to its decision_function; tree ensembles
get the stated limit and the global permutation importance, which the model card and the manifest carry; the
explainer is inside the signed manifest; the agent still imports no scikit-learn."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split
from typer.testing import CliRunner

from contracts.bundle import load_bundle
from contracts.errors import EdgeloopError, NotFoundError
from contracts.manifest import MANIFEST_FILE, SIGNATURE_FILE, Manifest, canonical_bytes
from contracts.runtime import OnnxModel
from contracts.signing import PRIVATE_KEY_FILE, load_private_key, load_public_key, sign_bytes
from edge_agent.explain import explain_records
from edgeloop.cli import app
from tests.agent_helpers import AgentServer, manifest_of
from tests.conftest import TrainedBundle
from trainer.data import load_training_data

TOKEN = "explain-token"
FEATURES = 9  # the sample data's inputs (reading_id ignored)


def _records(bundle: TrainedBundle, rows: int = 40) -> list[dict[str, Any]]:
    """Golden samples, held-out-like rows with missing values, an unseen category and a missing category."""
    manifest = manifest_of(bundle.bundle)
    records = [dict(sample.inputs) for sample in manifest.golden_samples]
    frame = pd.read_csv(bundle.data).drop(columns=["reading_id", "failure_24h"], errors="ignore").head(rows)
    for raw in frame.to_dict("records"):
        record: dict[str, Any] = {}
        for spec in manifest.inputs:
            value = raw.get(spec.name)
            missing = value is None or (isinstance(value, float) and np.isnan(value))
            if spec.kind == "numeric":
                record[spec.name] = None if missing else float(value)
            else:
                record[spec.name] = None if missing else str(value)
        records.append(record)
    records[-1]["machine_type"] = "turbine"  # unseen in training
    records[-2]["site"] = None  # missing category
    records[-3]["temperature_c"] = None  # missing number -> the training median
    return records


def _sklearn_reference(bundle: TrainedBundle, target: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Independent computation from the fitted pipeline: coef * transformed value, summed back per input
    feature; categorical terms are centred on their mean over the training rows (the trainer's split)."""
    mlflow.set_tracking_uri(bundle.tracking_uri)
    pipeline = mlflow.sklearn.load_model(f"runs:/{bundle.run_id}/model")
    pre, estimator = pipeline.steps[0][1], pipeline.steps[-1][1]
    inputs = manifest_of(bundle.bundle).inputs
    frame = pd.DataFrame(
        {
            spec.name: [
                (np.nan if r[spec.name] is None else r[spec.name])
                if spec.kind == "numeric"
                else ("" if r[spec.name] is None else r[spec.name])
                for r in records
            ]
            for spec in inputs
        }
    )
    data = load_training_data(bundle.data, target, ["reading_id"])
    train_x, _, _, _ = train_test_split(
        data.features, data.target, test_size=0.2, stratify=data.target, random_state=42
    )
    transformed, transformed_train = pre.transform(frame), pre.transform(train_x[frame.columns])
    coef = estimator.coef_
    per_feature = np.zeros((len(frame), coef.shape[0], len(inputs)))
    base = estimator.intercept_.astype(np.float64).copy()
    names = list(pre.get_feature_names_out())
    for j, spec in enumerate(inputs):
        prefix = "numeric__" if spec.kind == "numeric" else "categorical__"
        cols = [
            i
            for i, n in enumerate(names)
            if n == f"{prefix}{spec.name}" or (spec.kind == "categorical" and n.startswith(f"{prefix}{spec.name}_"))
        ]
        per_feature[:, :, j] = transformed[:, cols] @ coef[:, cols].T
        if spec.kind == "categorical":
            average = (transformed_train[:, cols] @ coef[:, cols].T).mean(axis=0)
            per_feature[:, :, j] -= average
            base += average
    return {
        "contributions": per_feature,
        "base": base,
        "decision": np.asarray(pipeline.decision_function(frame)).reshape(len(frame), -1),
        "labels": pipeline.predict(frame),
        "features": [spec.name for spec in inputs],
        "classes": list(estimator.classes_),
    }


@pytest.fixture(scope="module")
def multiclass_bundle(workspace: Path, machines_csv: Path) -> TrainedBundle:
    """A multinomial logistic regression: machine_type (4 classes) from the other readings."""
    frame = pd.read_csv(machines_csv).drop(columns=["failure_24h"])
    frame = frame.rename(columns={"machine_type": "kind"})
    frame["machine_type"] = frame["site"]  # keep an input named machine_type for _records' unseen category
    data = workspace / "machines-kind.csv"
    frame.to_csv(data, index=False)
    return _train_and_convert_target(workspace, data, "kind")


def _train_and_convert_target(workspace: Path, data: Path, target: str) -> TrainedBundle:
    from converter.convert import convert_model
    from converter.settings import ConvertSettings
    from trainer.settings import TrainSettings
    from trainer.train import train_model

    tracking = f"sqlite:///{workspace / 'mlflow.db'}"
    settings = TrainSettings(tracking_uri=tracking, artifact_root=workspace / "artifacts")
    result = train_model(data, target, "machine-kind", "logreg", ["reading_id"], settings)
    out = workspace / "bundles" / f"machine-kind-v{result.version}"
    convert_model(
        f"machine-kind/{result.version}", out, ConvertSettings(tracking_uri=tracking, keys_dir=workspace / "keys")
    )
    return TrainedBundle("machine-kind", data, out, workspace / "keys", tracking, result.run_id)


def _explain(bundle: TrainedBundle, records: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
    return explain_records(
        OnnxModel.load(load_bundle(bundle.bundle, load_public_key(bundle.public_key))), records, top_k
    )


def test_binary_contributions_equal_the_sklearn_pipeline_and_add_up_to_its_decision_function(
    logreg_bundle_v2: TrainedBundle,
) -> None:
    records = _records(logreg_bundle_v2)
    reference = _sklearn_reference(logreg_bundle_v2, "failure_24h", records)
    items = _explain(logreg_bundle_v2, records, top_k=FEATURES)
    assert len(reference["features"]) == FEATURES
    for row, item in enumerate(items):
        assert item["available"] and item["output"] == "log-odds"
        assert item["toward"] == reference["classes"][1]
        assert item["label"] == reference["labels"][row]
        got = {c["feature"]: c["contribution"] for c in item["contributions"]}
        assert set(got) == set(reference["features"]) and item["rest"] == 0.0
        for j, feature in enumerate(reference["features"]):
            assert got[feature] == pytest.approx(reference["contributions"][row, 0, j], abs=1e-5), feature
        assert item["base"] == pytest.approx(reference["base"][0], abs=1e-5)
        assert item["base"] + sum(got.values()) == pytest.approx(reference["decision"][row, 0], abs=1e-5)
        assert item["logit"] == pytest.approx(reference["decision"][row, 0], abs=1e-5)
        check = item["check"]
        assert check["ok"] and check["abs_diff"] < 1e-5, check
        if check["model_logit"] is not None and abs(item["logit"]) < 8:
            assert check["model_logit"] == pytest.approx(item["logit"], abs=1e-3)  # float32 probabilities


def test_top_k_is_ordered_by_absolute_contribution_and_the_rest_adds_up(logreg_bundle_v2: TrainedBundle) -> None:
    records = _records(logreg_bundle_v2, rows=10)
    full = _explain(logreg_bundle_v2, records, top_k=FEATURES)
    top = _explain(logreg_bundle_v2, records, top_k=3)
    for whole, short in zip(full, top, strict=True):
        sizes = [abs(c["contribution"]) for c in whole["contributions"]]
        assert sizes == sorted(sizes, reverse=True)
        assert [c["feature"] for c in short["contributions"]] == [c["feature"] for c in whole["contributions"][:3]]
        shown = sum(c["contribution"] for c in short["contributions"])
        assert short["base"] + shown + short["rest"] == pytest.approx(short["logit"], abs=1e-9)
    unseen = next(c for c in full[-1]["contributions"] if c["feature"] == "machine_type")
    assert unseen["value"] == "turbine"  # an unseen category: coefficient 0, minus the average


def test_multinomial_contributions_explain_the_predicted_class_logit(multiclass_bundle: TrainedBundle) -> None:
    manifest = manifest_of(multiclass_bundle.bundle)
    assert manifest.explainer is not None and manifest.explainer.link == "softmax"
    records = _records(multiclass_bundle, rows=25)
    reference = _sklearn_reference(multiclass_bundle, "kind", records)
    items = _explain(multiclass_bundle, records, top_k=len(reference["features"]))
    assert len({item["label"] for item in items}) > 1
    for row, item in enumerate(items):
        k = reference["classes"].index(item["label"])
        assert item["toward"] == item["label"] == reference["labels"][row] and item["output"] == "logit"
        got = {c["feature"]: c["contribution"] for c in item["contributions"]}
        for j, feature in enumerate(reference["features"]):
            assert got[feature] == pytest.approx(reference["contributions"][row, k, j], abs=1e-5), feature
        assert item["base"] + sum(got.values()) == pytest.approx(reference["decision"][row, k], abs=1e-5)
        assert item["check"]["ok"], item["check"]


def test_tree_ensembles_state_the_limit_and_carry_the_permutation_importance(rf_bundle: TrainedBundle) -> None:
    manifest = manifest_of(rf_bundle.bundle)
    assert manifest.explainer is None
    importance = manifest.importance
    assert importance is not None and importance.metric == "roc_auc" and importance.n_repeats == 5
    assert {f.feature for f in importance.features} == set(manifest.feature_names)
    means = [f.mean for f in importance.features]
    assert means == sorted(means, reverse=True) and means[0] > 0.01
    item = _explain(rf_bundle, _records(rf_bundle, rows=2), top_k=5)[0]
    assert item["available"] is False and "contributions" not in item
    assert "tree ensembles" in item["reason"] and "permutation importance" in item["reason"]
    assert "\n" not in item["reason"]
    assert item["importance"]["features"][0]["feature"] == importance.features[0].feature


def test_model_card_has_the_permutation_importance_table_and_mlflow_the_json(logreg_bundle_v2: TrainedBundle) -> None:
    client = mlflow.tracking.MlflowClient(logreg_bundle_v2.tracking_uri)
    folder = Path(client.download_artifacts(logreg_bundle_v2.run_id, "edgeloop"))
    card = (folder / "model_card.md").read_text()
    logged = json.loads((folder / "permutation_importance.json").read_text())
    assert "## What drives the model (permutation importance, held-out rows)" in card
    assert "| rank | feature | mean drop | std |" in card
    for rank, item in enumerate(logged["features"], start=1):
        assert f"| {rank} | `{item['feature']}` | {item['mean']:.4f} | {item['std']:.4f} |" in card
    assert {item["feature"] for item in logged["features"]} == set(manifest_of(logreg_bundle_v2.bundle).feature_names)
    assert logged["metric"] == "roc_auc" and logged["rows"] == 400 and logged["random_state"] == 42
    assert manifest_of(logreg_bundle_v2.bundle).importance.model_dump() == logged  # type: ignore[union-attr]


def test_tampering_with_the_explainer_breaks_the_signature(logreg_bundle_v2: TrainedBundle, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(logreg_bundle_v2.bundle, copy)
    data = orjson.loads((copy / MANIFEST_FILE).read_bytes())
    data["explainer"]["numeric"][0]["coef"][0] *= -1  # flip what a feature is said to contribute
    (copy / MANIFEST_FILE).write_bytes(orjson.dumps(data))
    with pytest.raises(EdgeloopError, match="signature"):
        load_bundle(copy, load_public_key(logreg_bundle_v2.public_key))


def test_bundles_signed_before_explanations_existed_still_load(logreg_bundle_v2: TrainedBundle, tmp_path: Path) -> None:
    copy = tmp_path / "old"
    shutil.copytree(logreg_bundle_v2.bundle, copy)
    data = orjson.loads((copy / MANIFEST_FILE).read_bytes())
    del data["explainer"], data["importance"]
    old_bytes = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)  # what an older edgeloop signed
    key = load_private_key(logreg_bundle_v2.keys_dir / PRIVATE_KEY_FILE)
    (copy / MANIFEST_FILE).write_bytes(orjson.dumps(data))
    (copy / SIGNATURE_FILE).write_bytes(sign_bytes(old_bytes, key))
    bundle = load_bundle(copy, load_public_key(logreg_bundle_v2.public_key))
    assert bundle.manifest.explainer is None and canonical_bytes(bundle.manifest) == old_bytes
    item = explain_records(OnnxModel.load(bundle), _records(logreg_bundle_v2, rows=1)[:1], 5)[0]
    assert item["available"] is False and "re-convert" in item["reason"]
    assert Manifest.model_validate(data).importance is None


@pytest.fixture(scope="module")
def agent(logreg_bundle_v2: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentServer]:
    server = AgentServer(
        state_dir=tmp_path_factory.mktemp("agent-explain"),
        bundle=logreg_bundle_v2.bundle,
        public_key=logreg_bundle_v2.public_key,
        token=TOKEN,
        explain_top_k=3,
        max_batch=20,
    )
    yield server
    server.stop()


@pytest.mark.device
def test_rest_explain_answers_the_prediction_and_the_top_k(agent: AgentServer, logreg_bundle_v2: TrainedBundle) -> None:
    records = _records(logreg_bundle_v2, rows=3)
    body = agent.client.post("/v1/explain", json=records[0]).json()
    predicted = agent.predict(records[0]).json()
    assert body["model"] == "machine-failure" and body["model_version"] == 2
    assert body["label"] == predicted["label"] and body["available"] is True
    assert body["probabilities"] == pytest.approx(predicted["probabilities"], abs=1e-7)
    assert len(body["contributions"]) == 3  # explain_top_k
    assert len(agent.client.post("/v1/explain?top_k=7", json=records[0]).json()["contributions"]) == 7
    assert len(agent.client.post("/v1/explain?top_k=50", json=records[0]).json()["contributions"]) == FEATURES
    batch = agent.client.post("/v1/explain", json={"records": records}).json()
    assert len(batch["explanations"]) == len(records)
    assert all(item["check"]["ok"] for item in batch["explanations"])


@pytest.mark.device
def test_rest_explain_has_the_same_auth_and_validation_as_predict(
    agent: AgentServer, logreg_bundle_v2: TrainedBundle
) -> None:
    import httpx

    record = _records(logreg_bundle_v2, rows=1)[0]
    assert httpx.post(f"{agent.url}/v1/explain", json=record).status_code == 401
    for payload in ({**record, "colour": "red"}, {**record, "temperature_c": "hot"}, []):
        explained = agent.client.post("/v1/explain", json=payload)
        predicted = agent.predict(payload)
        assert explained.status_code == predicted.status_code == 422
        assert explained.json() == predicted.json()
    assert agent.client.post("/v1/explain", json=[record] * 21).status_code == 413
    assert agent.client.post("/v1/explain", content=b"{nope").status_code == 400
    for raw in ("0", "two", "\u00b2", "9" * 5000):  # superscript two passes str.isdigit() but not int()
        bad_k = agent.client.post("/v1/explain", params={"top_k": raw}, json=record)
        assert bad_k.status_code == 422 and "top_k" in bad_k.json()["detail"], raw
    assert "/v1/explain" in agent.client.get("/openapi.json").json()["paths"]


def test_cli_explain_prints_contributions_or_the_limit(
    logreg_bundle_v2: TrainedBundle, rf_bundle: TrainedBundle, tmp_path: Path
) -> None:
    records = tmp_path / "records.json"
    records.write_bytes(orjson.dumps({"records": _records(logreg_bundle_v2, rows=2)[:2]}))
    runner = CliRunner()
    args = ["explain", "--input", str(records), "--top-k", "2"]
    result = runner.invoke(app, [*args, "--bundle", str(logreg_bundle_v2.bundle), "--json"])
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert len(items) == 2 and all(len(item["contributions"]) == 2 for item in items)
    assert "signature not verified" in result.stderr  # an auditor is told when nothing was checked
    key = ["--public-key", str(logreg_bundle_v2.public_key)]
    verified = runner.invoke(app, [*args, "--bundle", str(logreg_bundle_v2.bundle), "--json", *key])
    assert verified.exit_code == 0 and json.loads(verified.stdout) == items and verified.stderr == ""
    table = runner.invoke(app, [*args, "--bundle", str(logreg_bundle_v2.bundle)], terminal_width=160)
    assert table.exit_code == 0 and "log-odds of 1" in table.output and "(ok)" in table.output
    limit = runner.invoke(app, [*args, "--bundle", str(rf_bundle.bundle)], terminal_width=200)
    assert limit.exit_code == 0 and "tree ensembles" in limit.output and "permutation importance" in limit.output
    missing = runner.invoke(app, ["explain", "--bundle", str(rf_bundle.bundle), "--input", str(tmp_path / "x")])
    assert isinstance(missing.exception, NotFoundError) and "not found" in str(missing.exception)


def test_the_edge_agent_still_imports_no_scikit_learn() -> None:
    code = (
        "import sys, edge_agent.explain, edge_agent.api, edge_agent.app\n"
        "heavy = [m for m in ('sklearn', 'mlflow', 'skl2onnx', 'pandas', 'scipy') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert found == ""

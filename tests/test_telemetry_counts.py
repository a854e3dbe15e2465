"""Telemetry counting and drift scores (contracts.telemetry) on a real bundle's reference profile."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from contracts.bundle import load_bundle
from contracts.runtime import OnnxModel, encode_records
from contracts.telemetry import NumericCounts, WindowCounter, merge_counts, score_drift
from trainer.sample_data import make_machines


def _records(frame: pd.DataFrame, names: list[str]) -> list[dict]:
    subset = frame[names].astype(object)
    return subset.where(subset.notna(), None).to_dict(orient="records")


@pytest.fixture(scope="module")
def model(rf_bundle):
    return OnnxModel.load(load_bundle(rf_bundle.bundle))


def _count(model: OnnxModel, frame: pd.DataFrame, batch: int = 1) -> WindowCounter:
    counter = WindowCounter(model.manifest)
    records = _records(frame, model.manifest.feature_names)
    for start in range(0, len(records), batch):
        feed = encode_records(records[start : start + batch], model.manifest.inputs)
        counter.observe(feed, model.predict_feed(feed).labels, 0.0004)
    return counter


def test_training_distribution_is_stable_on_every_feature(model: OnnxModel) -> None:
    counts = _count(model, make_machines(3000, seed=123), batch=25).snapshot()
    scores, prediction = score_drift(counts, model.manifest)
    assert set(scores) == set(model.manifest.feature_names)
    assert all(score.psi < 0.1 for score in scores.values()), {k: v.psi for k, v in scores.items()}
    assert prediction is not None and prediction.psi < 0.1


def test_shifting_one_numeric_and_one_categorical_feature_flags_exactly_those(model: OnnxModel) -> None:
    frame = make_machines(3000, seed=321)
    frame["pressure_bar"] = frame["pressure_bar"] + 2.5
    frame["site"] = np.where(np.arange(len(frame)) % 2 == 0, "graz", "oslo")  # half an unseen site
    scores, _ = score_drift(_count(model, frame, batch=40).snapshot(), model.manifest)
    flagged = {name for name, score in scores.items() if score.psi > 0.25}
    assert flagged == {"pressure_bar", "site"}, {k: round(v.psi, 3) for k, v in scores.items()}
    assert scores["pressure_bar"].band == "significant"
    assert 0 < scores["site"].js <= 1


def test_single_record_and_batch_paths_count_the_same(model: OnnxModel) -> None:
    frame = make_machines(400, seed=5)
    one = _count(model, frame, batch=1).snapshot()
    many = _count(model, frame, batch=100).snapshot()
    assert one.records == many.records == 400
    assert one.features == many.features
    assert one.predicted == many.predicted
    temperature = one.features["temperature_c"]
    assert isinstance(temperature, NumericCounts)
    assert temperature.missing == int(frame["temperature_c"].isna().sum())
    assert sum(temperature.bins) + temperature.missing == 400


def test_merged_windows_equal_one_big_window(model: OnnxModel) -> None:
    frame = make_machines(600, seed=9, drift=True)
    whole = _count(model, frame, batch=50).snapshot()
    parts = [_count(model, frame.iloc[i : i + 200], batch=50).snapshot() for i in range(0, 600, 200)]
    merged = merge_counts(parts)
    assert merged.features == whole.features
    assert merged.predicted == whole.predicted
    assert merged.records == whole.records == 600
    assert score_drift(merged, model.manifest)[0] == score_drift(whole, model.manifest)[0]


def test_feedback_accuracy_matches_an_independent_computation(model: OnnxModel) -> None:
    from sklearn.metrics import accuracy_score

    frame = make_machines(500, seed=77)
    feed = encode_records(_records(frame, model.manifest.feature_names), model.manifest.inputs)
    predicted = model.predict_feed(feed).labels
    counter = WindowCounter(model.manifest)
    for actual, guess in zip(frame["failure_24h"], predicted, strict=True):
        counter.observe_feedback(int(actual), guess.item())
    counts = counter.snapshot()
    assert counts.feedback_count == 500
    assert counts.accuracy == pytest.approx(accuracy_score(frame["failure_24h"], predicted))


def test_snapshot_starts_a_new_window(model: OnnxModel) -> None:
    counter = _count(model, make_machines(50, seed=1), batch=10)
    counter.observe_error("schema")
    first = counter.snapshot()
    second = counter.snapshot()
    assert first.requests == 5 and first.errors == {"schema": 1}
    assert second.requests == 0 and second.records == 0 and not second.errors
    assert first.latency_quantile(0.99) == 0.0005

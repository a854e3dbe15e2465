"""One check suite run over every challenger mode (River's shape: the same checks for each implementation of
edge_agent/challenger.py), on real bundles and a real telemetry counter: a healthy challenger is used and its
work lands in feedback and lineage; a broken one never fails a request, is counted, and the champion answers;
stopping it leaves plain answers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from contracts.bundle import Bundle, load_bundle
from contracts.runtime import OnnxModel
from contracts.signing import load_public_key
from edge_agent.loaded import LoadedModel
from edge_agent.outbox import Outbox
from edge_agent.service import InferenceService
from edge_agent.telemetry import TelemetryReporter
from tests.conftest import TrainedBundle
from tests.test_agent_telemetry import records


def _loaded(trained: TrainedBundle) -> tuple[OnnxModel, Bundle]:
    bundle = load_bundle(trained.bundle, load_public_key(trained.public_key))
    return OnnxModel.load(bundle, intra_op_threads=1), bundle


def _strict(model: OnnxModel) -> OnnxModel:
    """The same model with a manifest that refuses a missing temperature (the champion imputes it)."""
    inputs = [s.model_copy(update={"nullable": s.name != "temperature_c"}) for s in model.manifest.inputs]
    return OnnxModel(model.manifest.model_copy(update={"inputs": inputs}), model.session)


def _start_shadow(service: InferenceService, model: OnnxModel | None, bundle: Bundle | None) -> None:
    service.set_shadow(model, bundle)


def _start_ab(service: InferenceService, model: OnnxModel | None, bundle: Bundle | None) -> None:
    service.set_ab(model, bundle, 1.0, None)  # every key to the challenger


def _shadow(service: InferenceService) -> tuple[LoadedModel | None, int]:
    return service.shadow, service.shadow_failures


def _ab(service: InferenceService) -> tuple[LoadedModel | None, int]:
    return (None if service.ab is None else service.ab.model), service.ab_failures


Start = Callable[[InferenceService, OnnxModel | None, Bundle | None], None]
MODES: dict[str, tuple[Start, Callable[[InferenceService], tuple[LoadedModel | None, int]]]] = {
    "shadow": (_start_shadow, _shadow),
    "ab": (_start_ab, _ab),
}


@pytest.fixture()
def service(tmp_path: Path, rf_bundle: TrainedBundle) -> InferenceService:
    reporter = TelemetryReporter(Outbox(tmp_path / "outbox.db"), "gw", "g", "test", tmp_path, interval=3600)
    service = InferenceService(telemetry=reporter)
    service.swap(*_loaded(rf_bundle))
    return service


@pytest.mark.parametrize("mode", MODES)
def test_a_healthy_challenger_is_used_and_traced(
    service: InferenceService, logreg_bundle_v2: TrainedBundle, mode: str
) -> None:
    start, running = MODES[mode]
    start(service, *_loaded(logreg_bundle_v2))
    challenger, _ = running(service)
    assert challenger is not None and challenger.manifest.version == 2
    answers = service.predict(records(4, seed=11), "key").predictions
    assert len(answers) == 4 and running(service)[1] == 0
    trace = service.lineage(answers[0]["prediction_id"])
    if mode == "ab":  # the challenger answered: its version, its arm
        assert {a["arm"] for a in answers} == {"challenger"} and trace["model"]["version"] == 2
    else:  # the champion answered; the shadow's label is kept beside it
        assert all("arm" not in a for a in answers) and trace["model"]["version"] == 1
        assert trace["shadow"] is not None and trace["shadow"]["label"] is not None
    assert service.feedback_for(answers[0]["prediction_id"], answers[0]["label"])["correct"] is True


@pytest.mark.parametrize("mode", MODES)
def test_a_failing_challenger_never_fails_a_request(
    service: InferenceService, logreg_bundle_v2: TrainedBundle, mode: str
) -> None:
    start, running = MODES[mode]
    model, bundle = _loaded(logreg_bundle_v2)
    start(service, _strict(model), bundle)
    bad = [{**row, "temperature_c": None} for row in records(3, seed=7)]
    for _ in range(4):
        answers = service.predict(bad, "key").predictions
        assert len(answers) == 3 and all(a.get("arm", "champion") == "champion" for a in answers)
    challenger, failures = running(service)
    assert challenger is not None and failures == 4
    assert service.lineage(answers[0]["prediction_id"])["model"]["version"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_stopping_a_challenger_leaves_plain_answers(
    service: InferenceService, logreg_bundle_v2: TrainedBundle, mode: str
) -> None:
    start, running = MODES[mode]
    start(service, *_loaded(logreg_bundle_v2))
    start(service, None, None)
    assert running(service) == (None, 0)
    answer = service.predict(records(1, seed=3)).predictions[0]
    assert set(answer) == {"prediction_id", "label", "probabilities"}
    assert service.lineage(answer["prediction_id"])["shadow"] is None

"""Central batch scoring (`edgeloop score`): the local engine and the Spark engine run the very bundle the
devices run, and every path gives sklearn's labels and probabilities within the converter's tolerance.

"Same predictions everywhere" is one parametrized test over `PREDICTION_PATHS`: each path is a function
`(ScoringCase, pytest.FixtureRequest) -> Scored` that scores the case's rows and returns labels and
probabilities in the order of `reading_id`. Another way to score (the edge agent's REST) is one more entry.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cloud_sync.batch import ScoreSettings, score
from contracts.bundle import load_bundle
from contracts.manifest import MISSING_CATEGORY, Manifest
from tests.conftest import TrainedBundle

ID = "reading_id"


@dataclass(frozen=True)
class Scored:
    labels: np.ndarray
    probabilities: np.ndarray
    """(rows, classes) in the order of the manifest's classes."""


@dataclass(frozen=True)
class ScoringCase:
    trained: TrainedBundle
    manifest: Manifest
    frame: pd.DataFrame
    """The rows to score, as read from the training CSV (ids, target, features with missing values)."""
    parquet: Path
    home: Path

    def settings(self, **overrides: object) -> ScoreSettings:
        values: dict[str, object] = {
            "public_key": self.trained.public_key,
            "tracking_uri": self.trained.tracking_uri,
            "batch_rows": 512,  # several batches even on the small sample
        }
        values.update(overrides)
        return ScoreSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def case(rf_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoringCase]:
    home = tmp_path_factory.mktemp("score-home")
    folder = tmp_path_factory.mktemp("score-data")
    frame = pd.read_csv(rf_bundle.data)
    parquet = folder / "machines.parquet"
    frame.to_parquet(parquet, index=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGELOOP_HOME", str(home))  # bundle cache and lineage artifacts stay in the temp dir
        yield ScoringCase(rf_bundle, load_bundle(rf_bundle.bundle).manifest, frame, parquet, home)


def _sorted(frame: pd.DataFrame, manifest: Manifest) -> Scored:
    frame = frame.sort_values(ID, kind="stable")
    probability = [f"probability_{cls}" for cls in manifest.classes]
    return Scored(frame["prediction"].to_numpy(), frame[probability].to_numpy(dtype=np.float64))


# --- the ways to score a table ------------------------------------------------------------------------------


def sklearn_path(case: ScoringCase, request: pytest.FixtureRequest) -> Scored:
    """The reference: the registered sklearn pipeline, fed the way the trainer fed it."""
    import mlflow

    mlflow.set_tracking_uri(case.trained.tracking_uri)
    model = mlflow.sklearn.load_model(f"models:/{case.trained.name}/1")
    frame = case.frame.sort_values(ID, kind="stable")
    features = pd.DataFrame(
        {
            spec.name: frame[spec.name].astype("float64")
            if spec.kind == "numeric"
            else frame[spec.name].map(lambda v: MISSING_CATEGORY if pd.isna(v) else str(v)).astype(object)
            for spec in case.manifest.inputs
        }
    )
    return Scored(np.asarray(model.predict(features)), np.asarray(model.predict_proba(features), dtype=np.float64))


def _local(case: ScoringCase, request: pytest.FixtureRequest, runtime: str) -> Scored:
    out = request.getfixturevalue("tmp_path") / f"local-{runtime}.parquet"
    score(str(case.trained.bundle), case.parquet, out, case.settings(tracking_uri=None, runtime=runtime))
    lineage = orjson.loads(Path(f"{out}.lineage.json").read_bytes())
    assert lineage["engine"]["runtime"] == ("numba" if runtime == "auto" else runtime)  # numba is in CI
    return _sorted(pd.read_parquet(out), case.manifest)


def local_engine_path(case: ScoringCase, request: pytest.FixtureRequest) -> Scored:
    """The default: `runtime = auto`, i.e. the compiled tree walk for this forest."""
    return _local(case, request, "auto")


def local_engine_onnxruntime_path(case: ScoringCase, request: pytest.FixtureRequest) -> Scored:
    return _local(case, request, "onnxruntime")


def spark_engine_path(case: ScoringCase, request: pytest.FixtureRequest) -> Scored:
    request.getfixturevalue("spark")
    out = request.getfixturevalue("tmp_path") / "spark.parquet"
    settings = case.settings(engine="spark", spark_io="spark", tracking_uri=None)
    score(str(case.trained.bundle), case.parquet, out, settings)
    return _sorted(pd.read_parquet(out), case.manifest)


def spark_pyarrow_io_path(case: ScoringCase, request: pytest.FixtureRequest) -> Scored:
    request.getfixturevalue("spark")
    out = request.getfixturevalue("tmp_path") / "spark-pyarrow.parquet"
    settings = case.settings(engine="spark", spark_io="pyarrow", tracking_uri=None)
    score(str(case.trained.bundle), case.parquet, out, settings)
    return _sorted(pd.read_parquet(out), case.manifest)


def spark_onnxruntime_path(case: ScoringCase, request: pytest.FixtureRequest) -> Scored:
    """The Spark executors on onnxruntime (the paths above take `runtime = auto`: the compiled tree walk)."""
    request.getfixturevalue("spark")
    out = request.getfixturevalue("tmp_path") / "spark-onnxruntime.parquet"
    settings = case.settings(engine="spark", spark_io="pyarrow", tracking_uri=None, runtime="onnxruntime")
    score(str(case.trained.bundle), case.parquet, out, settings)
    return _sorted(pd.read_parquet(out), case.manifest)


def agent_rest_path(case: ScoringCase, request: pytest.FixtureRequest) -> Scored:
    """The edge agent's REST (a real uvicorn), fed JSON records in batches as a device's clients would."""
    from tests.agent_helpers import AgentServer

    frame = case.frame.sort_values(ID, kind="stable")
    names = [spec.name for spec in case.manifest.inputs]
    subset = frame[names].astype(object)
    records = subset.where(subset.notna(), None).to_dict(orient="records")
    agent = AgentServer(
        state_dir=request.getfixturevalue("tmp_path") / "agent",
        bundle=case.trained.bundle,
        public_key=case.trained.public_key,
        token="t",
    )
    try:
        labels: list[object] = []
        probabilities: list[list[float]] = []
        for start in range(0, len(records), 500):
            answer = agent.predict({"records": records[start : start + 500]})
            assert answer.status_code == 200, answer.text
            for item in answer.json()["predictions"]:
                labels.append(item["label"])
                probabilities.append([item["probabilities"][str(cls)] for cls in case.manifest.classes])
    finally:
        agent.stop()
    return Scored(np.asarray(labels), np.asarray(probabilities, dtype=np.float64))


PREDICTION_PATHS: dict[str, Callable[[ScoringCase, pytest.FixtureRequest], Scored]] = {
    "edge agent REST": agent_rest_path,
    "local engine": local_engine_path,
    "local engine, onnxruntime": local_engine_onnxruntime_path,
    "spark engine": spark_engine_path,
    "spark engine, pyarrow I/O": spark_pyarrow_io_path,
    "spark engine, onnxruntime": spark_onnxruntime_path,
}


@pytest.fixture(scope="module")
def reference(case: ScoringCase, request: pytest.FixtureRequest) -> Scored:
    return sklearn_path(case, request)


@pytest.mark.parametrize(
    "path", [pytest.param(name, marks=[pytest.mark.spark] if "spark" in name else []) for name in PREDICTION_PATHS]
)
def test_same_predictions_everywhere(
    path: str, case: ScoringCase, reference: Scored, request: pytest.FixtureRequest
) -> None:
    scored = PREDICTION_PATHS[path](case, request)
    assert len(scored.labels) == len(case.frame)
    assert np.array_equal(scored.labels, reference.labels), f"{path}: labels differ from sklearn"
    worst = float(np.max(np.abs(scored.probabilities - reference.probabilities)))
    assert worst <= case.manifest.parity.tolerance, f"{path}: max |dp| {worst:.2e} vs sklearn"


# --- the Spark session, one per module ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        pytest.skip("pyspark is not installed (pip install 'edgeloop[spark]')")
    java_home = os.environ.get("JAVA_HOME")
    if not shutil.which("java") and not (java_home and Path(java_home, "bin", "java").exists()):
        pytest.skip("Java is not installed (the Spark engine needs Java 17+)")
    from cloud_sync.batch.spark_engine import spark_session

    session = spark_session("local[2]", batch_rows=512, ui=False, log_level="ERROR")
    yield session
    session.stop()


# --- the local engine -----------------------------------------------------------------------------------------


def _parts(frame: pd.DataFrame, count: int) -> list[pd.DataFrame]:
    bounds = np.linspace(0, len(frame), count + 1).astype(int)
    return [frame.iloc[start:stop] for start, stop in itertools.pairwise(bounds)]


def _read(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def test_parquet_file_output_layout_passthrough_and_lineage(
    case: ScoringCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud_sync.batch.local_engine import ParquetBatchWriter

    monkeypatch.setattr(ParquetBatchWriter, "ROW_GROUP_ROWS", 1000)  # 512-row batches gather into row groups
    out = tmp_path / "scored.parquet"
    progress: list[tuple[int, int | None, str]] = []
    result = score(str(case.trained.bundle), case.parquet, out, case.settings(), lambda *p: progress.append(p))
    assert result.rows == len(case.frame)
    assert progress[-1] == (len(case.frame), len(case.frame), "rows") and len(progress) > 1
    schema = pq.read_schema(out)
    classes = case.manifest.classes
    # every column the model does not use, in input order, then the predictions
    assert schema.names == [
        ID,
        "failure_24h",
        "prediction",
        *[f"probability_{c}" for c in classes],
        "model_name",
        "model_version",
    ]
    assert schema.field("prediction").type == pa.int64()
    assert schema.field(f"probability_{classes[0]}").type == pa.float32()
    scored = _read(out)
    assert scored[ID].tolist() == case.frame[ID].tolist()  # order kept, values unchanged
    assert scored["failure_24h"].tolist() == case.frame["failure_24h"].tolist()
    assert set(scored["model_name"]) == {case.manifest.name}
    assert set(scored["model_version"]) == {case.manifest.version}
    probabilities = scored[[f"probability_{c}" for c in classes]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    groups = pq.ParquetFile(out).metadata
    assert [groups.row_group(i).num_rows for i in range(groups.num_row_groups)] == [1024, 976]

    lineage = orjson.loads(Path(f"{out}.lineage.json").read_bytes())
    assert lineage["model"]["name"] == case.manifest.name
    assert lineage["model"]["version"] == case.manifest.version
    assert lineage["model"]["bundle_sha256"] == result.resolved.digest
    assert lineage["model"]["onnx_sha256"] == case.manifest.onnx.sha256
    assert lineage["input"] == {"path": str(case.parquet), "format": "parquet", "rows": len(case.frame)}
    assert lineage["output"]["rows"] == len(case.frame)
    assert lineage["engine"]["name"] == "local"
    assert lineage["duration_s"] > 0 and lineage["rows_per_s"] > 0

    from mlflow.tracking import MlflowClient

    client = MlflowClient(case.trained.tracking_uri)
    run = client.get_run(lineage["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "edgeloop-batch-scoring"
    assert run.data.params["bundle_sha256"] == result.resolved.digest
    assert run.data.params["input"] == str(case.parquet)
    assert run.data.params["engine"] == "local"
    assert run.data.metrics["input_rows"] == len(case.frame)
    assert run.data.metrics["rows_per_s"] > 0


def test_sessions_in_parallel_give_the_same_output_in_input_order(
    case: ScoringCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many small batches over three sessions: the output is identical, value for value and in input order, to
    one session scoring the batches one after another (CSV too, which has no row groups); so is the output of
    512-row batches cut into 50-row slices."""
    from cloud_sync.batch import local_engine

    outputs = {}
    for sessions in (1, 3):
        for source in (case.parquet, case.trained.data):
            out = tmp_path / f"{sessions}-{source.suffix[1:]}.parquet"
            settings = case.settings(tracking_uri=None, threads=sessions, batch_rows=37)
            assert score(str(case.trained.bundle), source, out, settings).rows == len(case.frame)
            outputs[sessions, source.suffix] = _read(out)
            lineage = orjson.loads(Path(f"{out}.lineage.json").read_bytes())
            assert lineage["engine"]["sessions"] == sessions
    monkeypatch.setattr(local_engine, "SLICE_ROWS", 50)
    sliced = tmp_path / "sliced.parquet"
    score(str(case.trained.bundle), case.parquet, sliced, case.settings(tracking_uri=None, threads=3))
    outputs[3, "sliced"] = _read(sliced)
    for key, frame in outputs.items():
        assert frame[ID].tolist() == case.frame[ID].tolist(), key
        pd.testing.assert_frame_equal(frame, outputs[1, ".parquet"], check_exact=True)


def test_the_compiled_walk_is_checked_against_onnxruntime_before_a_row_is_written(
    case: ScoringCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logreg_bundle_v2: TrainedBundle
) -> None:
    """`auto` scores a forest with the compiled walk (lineage says so, output equal to onnxruntime's); when the
    walk disagrees with onnxruntime on the first rows, `auto` scores with onnxruntime and says why, and an
    explicit `numba` stops with a one-line integrity error and no output; a model without trees is onnxruntime's."""
    pytest.importorskip("numba", reason="numba (the batch extra) is not installed: the compiled tree walk")
    from contracts import compiled_trees
    from contracts.errors import IntegrityError

    outputs = {}
    for runtime in ("onnxruntime", "auto"):
        out = tmp_path / f"{runtime}.parquet"
        score(str(case.trained.bundle), case.parquet, out, case.settings(tracking_uri=None, runtime=runtime))
        engine = orjson.loads(Path(f"{out}.lineage.json").read_bytes())["engine"]
        outputs[runtime] = _read(out)
        if runtime == "auto":
            assert engine["runtime"] == "numba" and engine["verified_rows"] == 512  # the first batch (batch_rows)
    pd.testing.assert_frame_equal(outputs["auto"], outputs["onnxruntime"], check_exact=False, atol=1e-6)
    assert outputs["auto"]["prediction"].tolist() == outputs["onnxruntime"]["prediction"].tolist()

    real = compiled_trees.compile_walk

    def off_by_a_tenth(ensemble: object) -> Callable[[np.ndarray], np.ndarray]:
        walk = real(ensemble)  # type: ignore[arg-type]
        return lambda features: walk(features) + 0.1

    monkeypatch.setattr(compiled_trees, "compile_walk", off_by_a_tenth)
    fallback = tmp_path / "fallback.parquet"
    score(str(case.trained.bundle), case.parquet, fallback, case.settings(tracking_uri=None))
    engine = orjson.loads(Path(f"{fallback}.lineage.json").read_bytes())["engine"]
    assert engine["runtime"] == "onnxruntime" and "disagree" in engine["runtime_reason"]
    pd.testing.assert_frame_equal(_read(fallback), outputs["onnxruntime"], check_exact=True)
    refused = tmp_path / "refused.parquet"
    with pytest.raises(IntegrityError, match="disagree") as raised:
        score(str(case.trained.bundle), case.parquet, refused, case.settings(tracking_uri=None, runtime="numba"))
    assert "\n" not in str(raised.value) and not refused.exists()
    assert not list(tmp_path.glob(".refused*"))  # no staged leftovers either

    linear = tmp_path / "linear.parquet"
    score(str(logreg_bundle_v2.bundle), case.parquet, linear, case.settings(tracking_uri=None))
    engine = orjson.loads(Path(f"{linear}.lineage.json").read_bytes())["engine"]
    assert engine["runtime"] == "onnxruntime" and "no tree ensemble" in engine["runtime_reason"]


def test_without_numba_auto_is_onnxruntime_and_numba_is_a_one_line_error(
    case: ScoringCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `batch` install without numba (e.g. a platform PyPI has no numba wheel for) still scores, and says why."""
    from contracts import compiled_trees
    from contracts.errors import InputError

    monkeypatch.setattr(compiled_trees, "numba_importable", lambda: False)
    out = tmp_path / "scored.parquet"
    score(str(case.trained.bundle), case.parquet, out, case.settings(tracking_uri=None))
    engine = orjson.loads(Path(f"{out}.lineage.json").read_bytes())["engine"]
    assert engine["runtime"] == "onnxruntime" and "numba is not installed" in engine["runtime_reason"]
    refused = tmp_path / "refused.parquet"
    with pytest.raises(InputError, match=r"--runtime numba cannot score this model: numba is not installed"):
        score(str(case.trained.bundle), case.parquet, refused, case.settings(tracking_uri=None, runtime="numba"))
    assert not refused.exists()


def test_parquet_directory_and_csv_give_the_same_output(case: ScoringCase, tmp_path: Path) -> None:
    reference = tmp_path / "reference.parquet"
    score(str(case.trained.bundle), case.parquet, reference, case.settings(tracking_uri=None))
    expected = _read(reference)

    folder = tmp_path / "dataset"
    folder.mkdir()
    for index, part in enumerate(_parts(case.frame, 3)):
        part.to_parquet(folder / f"part-{index}.parquet", index=False)
    (folder / "_SUCCESS").write_text("")  # marker files of other writers are ignored
    from_dir = tmp_path / "from-dir.parquet"
    score(str(case.trained.bundle), folder, from_dir, case.settings(tracking_uri=None))
    pd.testing.assert_frame_equal(_read(from_dir), expected)

    from_csv = tmp_path / "from-csv.parquet"
    result = score(str(case.trained.bundle), case.trained.data, from_csv, case.settings(tracking_uri=None))
    assert result.rows == len(case.frame)
    pd.testing.assert_frame_equal(_read(from_csv), expected)


def test_registry_alias_through_the_real_command(case: ScoringCase, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    command = [
        str(Path(sys.executable).with_name("edgeloop")),
        "score",
        "--model",
        f"{case.trained.name}@champion",
        "--input",
        str(case.parquet),
        "--output",
        str(out),
        "--tracking-uri",
        case.trained.tracking_uri,
        "--public-key",
        str(case.trained.public_key),
    ]
    env = {**os.environ, "EDGELOOP_HOME": str(tmp_path / "home")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"scored {len(case.frame):,} rows with {case.manifest.name} v1" in " ".join(done.stdout.split())
    cached = tmp_path / "home" / "cache" / "bundles" / case.manifest.name / "v1"
    assert load_bundle(cached, None).manifest.onnx.sha256 == case.manifest.onnx.sha256
    lineage = orjson.loads(Path(f"{out}.lineage.json").read_bytes())
    assert lineage["model"]["reference"] == f"{case.trained.name}@champion"
    assert lineage["model"]["registry"] == case.trained.tracking_uri
    expected = tmp_path / "expected.parquet"
    score(str(case.trained.bundle), case.parquet, expected, case.settings(tracking_uri=None))
    pd.testing.assert_frame_equal(_read(out), _read(expected))

    # a cached copy that no longer verifies is replaced from the registry, never used
    model = cached / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGELOOP_HOME", str(tmp_path / "home"))
        again = score(f"{case.trained.name}@champion", case.parquet, tmp_path / "again.parquet", case.settings())
    assert again.resolved.bundle.path == cached
    assert load_bundle(cached, None).manifest.onnx.sha256 == case.manifest.onnx.sha256

    # every option reaches the settings, a bad value is one line
    bad = subprocess.run([*command[:-4], "--spark-io", "hdfs"], capture_output=True, text=True, env=env, timeout=120)
    assert (
        bad.returncode != 0
        and bad.stderr.strip() == "error: invalid setting spark_io: Input should be 'auto', 'spark' or 'pyarrow'"
    )


# --- errors: one line, the right exit code, nothing left behind -------------------------------------------------


def run_edgeloop(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> CliRun:
    """Run `edgeloop ...` in-process through the real entry point (its one-line error handler)."""
    from edgeloop.cli import main

    monkeypatch.setenv("EDGELOOP_LOG_LEVEL", "WARNING")
    monkeypatch.delenv("EDGELOOP_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["edgeloop", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main()
    out, err = capsys.readouterr()
    code = stopped.value.code
    return CliRun(code if isinstance(code, int) else (0 if code is None else 1), out, err)


@dataclass(frozen=True)
class CliRun:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def _tampered_bundle(case: ScoringCase, where: Path) -> Path:
    copy = where / "tampered-bundle"
    shutil.copytree(case.trained.bundle, copy)
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    return copy


def _resigned_manifest(case: ScoringCase, where: Path) -> Path:
    copy = where / "altered-manifest"
    shutil.copytree(case.trained.bundle, copy)
    document = orjson.loads((copy / "manifest.json").read_bytes())
    document["classes"] = list(reversed(document["classes"]))
    (copy / "manifest.json").write_bytes(orjson.dumps(document))
    return copy


def _unconverted_version(case: ScoringCase) -> str:
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(case.trained.tracking_uri)
    name = "machine-failure-unconverted"
    if not client.search_model_versions(f"name='{name}'"):
        mlflow.set_tracking_uri(case.trained.tracking_uri)
        experiment = client.get_experiment_by_name(case.trained.name)
        assert experiment is not None
        with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
            mlflow.set_tag("purpose", "a registered version nobody converted")
        client.create_registered_model(name)
        version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
        client.set_registered_model_alias(name, "champion", version.version)
    return f"{name}@champion"


def _frame_file(case: ScoringCase, where: Path, name: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    path = where / name
    frame = change(case.frame.copy())
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def _half_bad_dataset(case: ScoringCase, where: Path) -> Path:
    """A dataset whose second file has text in a numeric column (a dataset's schema is its first file's)."""
    folder = where / "half-bad"
    folder.mkdir()
    case.frame.to_parquet(folder / "part-0.parquet", index=False)
    case.frame.assign(temperature_c="hot").to_parquet(folder / "part-1.parquet", index=False)
    return folder


def _bad_at_the_end_csv(case: ScoringCase, where: Path) -> Path:
    """A CSV of several MB (several Arrow blocks) whose only bad value is near the end: fails mid-stream."""
    frame = pd.concat([case.frame] * 30, ignore_index=True)
    frame["pressure_bar"] = frame["pressure_bar"].astype(object)
    frame.loc[len(frame) - 5, "pressure_bar"] = "high"
    path = where / "bad-at-the-end.csv"
    frame.to_csv(path, index=False)
    return path


ERROR_CASES: dict[str, tuple[Callable[[ScoringCase, Path], tuple[str, str]], int, str]] = {
    # name: (build (model, input), exit code, expected text in the message)
    "missing column": (
        lambda c, d: (str(c.trained.bundle), str(_frame_file(c, d, "x.parquet", lambda f: f.drop(columns="rpm")))),
        2,
        "lacks the model's column 'rpm'",
    ),
    "wrong type": (
        lambda c, d: (
            str(c.trained.bundle),
            str(_frame_file(c, d, "x.parquet", lambda f: f.assign(temperature_c=f["temperature_c"].astype(str)))),
        ),
        2,
        "column 'temperature_c'",
    ),
    "category given as numbers": (
        lambda c, d: (str(c.trained.bundle), str(_frame_file(c, d, "x.parquet", lambda f: f.assign(site=1)))),
        2,
        "expects a string category",
    ),
    "text in a numeric CSV column": (
        lambda c, d: (
            str(c.trained.bundle),
            str(_frame_file(c, d, "x.csv", lambda f: f.assign(pressure_bar="high"))),
        ),
        2,
        "pressure_bar",
    ),
    "input column named like an output": (
        lambda c, d: (str(c.trained.bundle), str(_frame_file(c, d, "x.parquet", lambda f: f.assign(prediction=0)))),
        2,
        "would collide",
    ),
    "a dataset file of the wrong type": (
        lambda c, d: (str(c.trained.bundle), str(_half_bad_dataset(c, d))),
        2,
        "part-1.parquet is large_string, but the model expects a number",
    ),
    "failure mid-stream": (
        lambda c, d: (str(c.trained.bundle), str(_bad_at_the_end_csv(c, d))),
        2,
        "bad-at-the-end.csv: column 'pressure_bar' must be a number (the model reads it as one), got 'high'",
    ),
    "unknown model": (lambda c, d: ("no-such-model@champion", str(c.parquet)), 3, "'no-such-model' not found"),
    "unknown alias": (lambda c, d: (f"{c.trained.name}@nightly", str(c.parquet)), 3, "no alias 'nightly'"),
    "model without a bundle": (lambda c, d: (_unconverted_version(c), str(c.parquet)), 3, "edgeloop convert"),
    "bad model path": (lambda c, d: (str(d / "nowhere"), str(c.parquet)), 3, "not found"),
    "bad input path": (lambda c, d: (str(c.trained.bundle), str(d / "missing.parquet")), 3, "not found"),
    "not a table": (lambda c, d: (str(c.trained.bundle), str(_not_parquet(d))), 2, "not a readable parquet"),
    "tampered model": (lambda c, d: (str(_tampered_bundle(c, d)), str(c.parquet)), 4, "altered"),
    "altered manifest": (lambda c, d: (str(_resigned_manifest(c, d)), str(c.parquet)), 4, "signature"),
}


def _not_parquet(where: Path) -> Path:
    path = where / "notes.parquet"
    path.write_text("this is not parquet\n")
    return path


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_errors_are_one_line_and_leave_no_output(
    name: str,
    case: ScoringCase,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    build, exit_code, expected = ERROR_CASES[name]
    model, source = build(case, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "scored.parquet"
    previous = b"an earlier job's output"
    out.write_bytes(previous)
    run = run_edgeloop(
        [
            "score",
            "--model",
            model,
            "--input",
            source,
            "--output",
            str(out),
            "--batch-rows",
            "256",
            "--public-key",
            str(case.trained.public_key),
            "--tracking-uri",
            case.trained.tracking_uri,
        ],
        monkeypatch,
        capsys,
    )
    assert run.exit_code == exit_code, run.stderr
    assert len(run.errors) == 1, run.stderr
    assert expected in run.errors[0], run.errors[0]
    assert "unexpected" not in run.errors[0] and "Traceback" not in run.stderr
    # nothing half-written: the earlier output is intact, no temporary file or sidecar is left
    assert out.read_bytes() == previous
    assert sorted(p.name for p in out_dir.iterdir()) == ["scored.parquet"]


# --- the Spark engine -----------------------------------------------------------------------------------------


@pytest.mark.spark
@pytest.mark.parametrize("io", ["spark", "pyarrow", "auto"])
def test_spark_engine_writes_the_same_table_as_the_local_engine(
    io: str, case: ScoringCase, spark: object, tmp_path: Path
) -> None:
    folder = tmp_path / "dataset"
    folder.mkdir()
    for index, part in enumerate(_parts(case.frame, 4)):  # several files: several tasks
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), folder / f"part-{index}.parquet", 97)
    local_out, spark_out = tmp_path / "local.parquet", tmp_path / "spark.parquet"
    score(str(case.trained.bundle), folder, local_out, case.settings(tracking_uri=None))
    result = score(str(case.trained.bundle), folder, spark_out, case.settings(engine="spark", spark_io=io))
    assert result.rows == len(case.frame)
    assert spark_out.is_dir() and not list(tmp_path.glob(".spark.parquet*"))
    assert (spark_out / "_SUCCESS").is_file() and not list(spark_out.glob(".part-*.tmp"))
    local, remote = _read(local_out), pq.read_table(spark_out).to_pandas()
    assert list(remote.columns) == list(local.columns)
    assert remote.dtypes.astype(str).tolist() == local.dtypes.astype(str).tolist()
    remote = remote.sort_values(ID, kind="stable").reset_index(drop=True)
    local = local.sort_values(ID, kind="stable").reset_index(drop=True)
    exact = [c for c in local.columns if not c.startswith("probability_")]
    pd.testing.assert_frame_equal(remote[exact], local[exact])
    probability = [c for c in local.columns if c.startswith("probability_")]
    worst = float(np.max(np.abs(remote[probability].to_numpy() - local[probability].to_numpy())))
    assert worst <= case.manifest.parity.tolerance
    lineage = orjson.loads(Path(f"{spark_out}.lineage.json").read_bytes())
    assert lineage["engine"]["name"] == "spark" and lineage["output"]["rows"] == len(case.frame)
    assert lineage["engine"]["io"] == ("pyarrow" if io == "auto" else io)  # auto: paths, so pyarrow
    assert lineage["mlflow_run_id"]
    if io != "spark":  # tasks follow the input's row groups: in input order, at most ~4 per core
        parts = sorted(spark_out.glob("part-*.parquet"))
        assert 4 <= len(parts) <= 4 * 2 + 4
        rows = [pq.ParquetFile(p).metadata.num_rows for p in parts]
        assert sum(rows) == len(case.frame) and min(rows) > 0
        assert pq.read_table(spark_out)[ID].to_pylist() == case.frame[ID].tolist()


def test_spark_io_auto_is_pyarrow_for_paths_and_spark_with_the_reason_for_uris() -> None:
    import logging

    from cloud_sync.batch.job import spark_io_for
    from contracts.errors import InputError

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("edgeloop.batch")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        assert spark_io_for("auto", "/data/in.parquet", "/data/out") == "pyarrow"
        assert spark_io_for("auto", "file:///data/in.parquet", "/data/out") == "pyarrow"
        assert records == []
        assert spark_io_for("auto", "/data/in.parquet", "s3a://bucket/scored") == "spark"
        assert spark_io_for("spark", "/data/in.parquet", "/data/out") == "spark"
        with pytest.raises(InputError, match="use spark_io=spark for URIs"):
            spark_io_for("pyarrow", "hdfs:///data/in", "/data/out")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(records) == 1
    fields = records[0].fields  # type: ignore[attr-defined]
    assert fields["io"] == "spark" and fields["reason"].startswith("s3a://bucket/scored is a URI")


@pytest.mark.spark
def test_spark_pyarrow_io_refuses_uris(case: ScoringCase, spark: object, tmp_path: Path) -> None:
    from contracts.errors import InputError

    settings = case.settings(engine="spark", spark_io="pyarrow")
    with pytest.raises(InputError, match="spark_io=spark"):
        score(str(case.trained.bundle), case.parquet, "s3a://bucket/scored", settings)


@pytest.mark.spark
@pytest.mark.parametrize("io", ["spark", "pyarrow"])
def test_spark_engine_failure_on_an_executor_is_one_line(
    io: str, case: ScoringCase, spark: object, tmp_path: Path
) -> None:
    from contracts.errors import InputError

    out = tmp_path / "out" / "spark.parquet"
    out.parent.mkdir()
    settings = case.settings(engine="spark", spark_io=io)
    with pytest.raises(InputError) as raised:
        score(str(case.trained.bundle), _bad_at_the_end_csv(case, tmp_path), out, settings)
    message = str(raised.value)
    # Spark's CSV reader quotes the value; pyarrow I/O reads with the local engine's reader and says the same
    expected = '"high"' if io == "spark" else "column 'pressure_bar' must be a number (the model reads it as one)"
    assert "\n" not in message and "bad-at-the-end.csv" in message and expected in message, message
    assert list(out.parent.iterdir()) == []

"""Retraining policies and the retraining job behind `edgeloop retrain NAME`.

A policy per model (YAML) says when to retrain, on what data and what to do with the result:

    model: machine-failure
    triggers: [{alert: feature-drift}, {alert: accuracy-low}, {schedule: 7d}, manual]
    data:
      original: data/machines.csv      # the data the champion was trained on
      target: failure_24h
      ignore: [reading_id]
      feedback: data/feedback.csv       # labelled rows collected from devices (same columns), optional
      feedback_source: file             # or `cloud`: the rows devices sent (opt-in), from the cloud's API
      feedback_max_rows: 50000          # the newest rows are kept
      max_device_share: 0.04            # one device's rows: at most 4 % of the original rows
    train: {model: rf}
    result: {deploy: wait}              # or {deploy: canary, group: line-1, canary: 25%}

The job runs the trainer as a separate process (`edgeloop train ...`; no import of the trainer), so a
crash or a memory spike in training cannot take the caller down. The new version registers as
@challenger (the trainer's rule); the job tags its MLflow run with the lineage of the feedback data
(sha256, rows, source) next to the original data's, and records the retrain in the cloud's audit log
(`POST /v1/retrains`) when a cloud is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.errors import EdgeloopError, InputError
from edgeloop.retrain_mixture import DEVICE_COLUMN, Mixture, fleet_sample

__all__ = [
    "RetrainPolicy",
    "RetrainResult",
    "TrainingData",
    "build_training_data",
    "load_policy",
    "run_edgeloop_process",
    "run_retrain",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataPolicy(_Strict):
    original: Path
    target: str = "failure_24h"
    ignore: list[str] = Field(default_factory=list)
    feedback: Path | None = None
    feedback_source: Literal["file", "cloud"] = "file"
    """`cloud`: the feedback rows devices sent (GET /v1/feedback-rows of --cloud-url) instead of a file."""
    feedback_max_rows: int = Field(default=50_000, ge=0)
    max_device_share: float | None = Field(default=0.04, ge=0, le=1)
    """Feedback rows kept per device at most, as a share of the original rows (a seeded sample beyond it), so
    one device's rows do not rewrite the reference for the fleet (edgeloop/retrain_mixture.py); null = no cap."""


class TrainPolicy(_Strict):
    model: str = "rf"


class ResultPolicy(_Strict):
    deploy: str = Field(default="wait", pattern="^(wait|canary|shadow-canary)$")
    """`canary`: the challenger serves on the canary; `shadow-canary`: it runs in shadow there and is promoted
    when its measured accuracy is at least the champion's."""
    group: str | None = None
    canary: str = "10%"
    soak_minutes: float = Field(default=10.0, ge=0)


class RetrainPolicy(_Strict):
    model: str
    triggers: list[Any] = Field(default_factory=lambda: ["manual"])
    data: DataPolicy
    train: TrainPolicy = Field(default_factory=TrainPolicy)
    result: ResultPolicy = Field(default_factory=ResultPolicy)


def load_policy(path: Path) -> RetrainPolicy:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read retraining policy {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"retraining policy {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        policy = RetrainPolicy.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(f"retraining policy {path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    base = Path(path).resolve().parent
    data = policy.data
    data.original = data.original if data.original.is_absolute() else base / data.original
    if data.feedback is not None and not data.feedback.is_absolute():
        data.feedback = base / data.feedback
    return policy


@dataclass
class RetrainResult:
    name: str
    version: str
    run_id: str
    data_path: Path
    data_sha256: str
    feedback_rows: int
    feedback_sha256: str | None
    mixture: Mixture | None = None
    tags: dict[str, str] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read(path: Path) -> Any:
    import pandas as pd

    if not path.is_file():
        raise InputError(f"data file {path} not found")
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def fetch_cloud_feedback(
    policy: RetrainPolicy, cloud_url: str, token: str | None, workdir: Path, target_dtype: Any
) -> tuple[Path, str]:
    """The newest feedback rows devices sent for the model, from the cloud's API, as a CSV in `workdir`:
    the kept fields as columns and the true label as the target. Returns (path, source URL)."""
    import httpx
    import pandas as pd

    from contracts.errors import ServiceUnavailableError

    path = f"/v1/feedback-rows?model={policy.model}&limit={max(policy.data.feedback_max_rows, 1)}"
    url = cloud_url.rstrip("/") + path
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise ServiceUnavailableError(f"the cloud at {cloud_url} is unreachable ({exc})") from None
    if response.status_code >= 400:
        raise InputError(f"the cloud answered HTTP {response.status_code} for feedback rows: {response.text[:200]}")
    rows = response.json()["rows"]
    frame = pd.DataFrame(
        [{**row["features"], policy.data.target: row["actual"], DEVICE_COLUMN: row["device_id"]} for row in rows]
    )
    if rows:
        with contextlib.suppress(TypeError, ValueError):  # else the labels stay text; the trainer says so
            frame[policy.data.target] = frame[policy.data.target].astype(target_dtype)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"{policy.model}-feedback.csv"
    frame.to_csv(out, index=False)
    return out, url


@dataclass(frozen=True)
class TrainingData:
    path: Path
    feedback_rows: int
    """Feedback rows in the training data (after the cap per device)."""
    feedback_sha256: str | None
    feedback_source: str | None
    mixture: Mixture | None


def build_training_data(
    policy: RetrainPolicy, workdir: Path, cloud: tuple[str, str | None] | None = None
) -> TrainingData:
    """Original rows plus the newest feedback rows (same columns), each device's capped at
    `max_device_share` of the original rows -> one CSV.

    With `feedback_source: cloud`, the rows come from the cloud (`cloud` = (url, operator token)); fields the
    devices did not keep (data minimisation) become missing values, which the trainer's pipeline imputes."""
    import pandas as pd

    original = _read(policy.data.original)
    feedback_rows, feedback_sha, mixture = 0, None, None
    frames = [original]
    if policy.data.feedback_source == "cloud":
        if cloud is None:
            raise InputError("the policy takes feedback rows from the cloud: give --cloud-url and an operator token")
        target_dtype = original[policy.data.target].dtype if policy.data.target in original else object
        feedback_path, source = fetch_cloud_feedback(policy, cloud[0], cloud[1], workdir, target_dtype)
        feedback = pd.read_csv(feedback_path) if feedback_path.stat().st_size > 4 else pd.DataFrame()
        for column in original.columns:
            if column not in feedback.columns:
                feedback[column] = None
    elif policy.data.feedback is not None:
        feedback_path, source = policy.data.feedback, str(policy.data.feedback)
        feedback = _read(feedback_path)
    else:
        feedback_path = None
    if feedback_path is not None:
        missing = sorted(set(original.columns) - set(feedback.columns) - set(policy.data.ignore))
        if missing:
            raise InputError(f"feedback rows {policy.data.feedback} lack columns {', '.join(missing)}")
        columns = [c for c in original.columns if c in feedback.columns]
        with_device = (
            [*columns, DEVICE_COLUMN] if DEVICE_COLUMN in feedback and DEVICE_COLUMN not in columns else columns
        )
        feedback = feedback[with_device].tail(policy.data.feedback_max_rows)
        feedback, mixture = fleet_sample(feedback, len(original), policy.data.max_device_share)
        feedback = feedback[columns]
        feedback_rows, feedback_sha = len(feedback), _sha256(feedback_path)
        frames.append(feedback)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"{policy.model}-retrain.csv"
    pd.concat(frames, ignore_index=True).to_csv(out, index=False)
    return TrainingData(out, feedback_rows, feedback_sha, source if feedback_path is not None else None, mixture)


def run_edgeloop_process(args: list[str]) -> str:
    """Run `edgeloop ARGS` as a separate process (same interpreter); its one-line error becomes ours."""
    command = [sys.executable, "-m", "edgeloop", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        detail = errors[-1][len("error: ") :] if errors else (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeloopError(f"`edgeloop {args[0]}` failed (exit {done.returncode}): {detail}")
    return done.stdout


def run_retrain(
    policy: RetrainPolicy,
    workdir: Path,
    tracking_uri: str | None,
    trigger: str,
    cloud: tuple[str, str | None] | None = None,
) -> RetrainResult:
    data = build_training_data(policy, workdir, cloud)
    args = ["train", "--data", str(data.path), "--target", policy.data.target, "--name", policy.model]
    args += ["--model", policy.train.model]
    for column in policy.data.ignore:
        args += ["--ignore", column]
    if tracking_uri:
        args += ["--tracking-uri", tracking_uri]
    output = " ".join(run_edgeloop_process(args).split())
    registered = re.search(r"registered (\S+) version (\d+) as @(\w+)", output)
    run = re.search(r"\brun ([0-9a-f]{32})\b", output)
    if not registered or not run:
        raise EdgeloopError(f"`edgeloop train` did not report the registered version: {output[:200]}")
    tags = {
        "edgeloop.retrain_trigger": trigger,
        "edgeloop.retrain_original_sha256": _sha256(policy.data.original),
        "edgeloop.retrain_original_source": str(policy.data.original),
        "edgeloop.retrain_feedback_rows": str(data.feedback_rows),
    }
    if data.feedback_sha256 is not None and data.feedback_source is not None:
        tags["edgeloop.retrain_feedback_sha256"] = data.feedback_sha256
        tags["edgeloop.retrain_feedback_source"] = data.feedback_source
    if data.mixture is not None:
        tags["edgeloop.retrain_mixture"] = data.mixture.to_json()
    _tag(tracking_uri, policy.model, registered.group(2), run.group(1), tags)
    name, version, run_id = policy.model, registered.group(2), run.group(1)
    return RetrainResult(
        name,
        version,
        run_id,
        data.path,
        _sha256(data.path),
        data.feedback_rows,
        data.feedback_sha256,
        data.mixture,
        tags,
    )


def _tag(tracking_uri: str | None, name: str, version: str, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.tracking import MlflowClient

    from contracts.tracking import resolve_tracking_uri

    # the same resolution as the `edgeloop train` child, which inherits this environment and working directory
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
        client.set_model_version_tag(name, version, key, value)

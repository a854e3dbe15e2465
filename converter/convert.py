"""Convert a registered model into a signed, verified bundle.

    bundle = convert_model("machine-failure@champion", Path("bundles/machine-failure"))

Steps, each a gate that fails the conversion with a report naming the cause: resolve the reference ->
held-out metric floors (`min_metrics`, converter/gates.py) -> load the sklearn pipeline and edgeloop's run
artifacts -> skl2onnx + onnx.checker -> parity on held-out rows and golden samples, each through onnxruntime and
through the numpy runtime (both recorded in the parity report) -> golden samples replayed on both runtimes
from the written, signed bundle. The bundle is built in a temporary directory and renamed into place only
when every gate passed. Then the ONNX flavour is logged back to the run and the model version is tagged
with the bundle's digests.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from contracts.bundle import Bundle, atomic_directory, load_bundle
from contracts.errors import ConversionError, InputError, NotFoundError
from contracts.logs import log_event
from contracts.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    FeatureSpec,
    GlobalImportance,
    GoldenSample,
    Lineage,
    Manifest,
    OnnxInfo,
    ParityReport,
    canonical_bytes,
    sha256_file,
)
from contracts.signing import PRIVATE_KEY_FILE, generate_keypair, load_private_key, public_key_of, sign_bytes
from contracts.tracking import ensure_tracking_reachable
from converter.explain import checked_explainer
from converter.export import to_onnx
from converter.gates import check_metric_floors
from converter.parity import check_runtimes, golden_rows, records_of, replay_golden_samples
from converter.resolve import ResolvedModel, resolve_reference
from converter.settings import ConvertSettings

__all__ = ["check_output_directory", "convert_model", "ensure_signing_key"]

logger = logging.getLogger("edgeloop.converter")
_ARTIFACTS = ("feature_schema.json", "reference_profile.json", "prediction_profile.json", "holdout.parquet")
_OPTIONAL = ("model_card.md", "permutation_importance.json")  # runs of older trainers lack them


def ensure_signing_key(keys_dir: Path, require: bool = False) -> Path:
    """The private key in `keys_dir`; a missing one is generated, or refused when `require` is set (CI: a
    throwaway key signs bundles that every device refuses)."""
    private = keys_dir / PRIVATE_KEY_FILE
    if not private.exists():
        if require:
            raise NotFoundError(
                f"signing key {private} not found and require_key is set (--require-key, EDGELOOP_REQUIRE_KEY): "
                "refusing to sign with a new key no device trusts; put the private key there or pass --keys-dir"
            )
        generate_keypair(keys_dir)
        log_event(logger, "signing key pair generated", keys_dir=str(keys_dir))
    return private


def _download_artifacts(client: object, run_id: str, into: Path) -> dict[str, Path]:
    from mlflow.exceptions import MlflowException

    paths = {}
    for name in (*_ARTIFACTS, *_OPTIONAL):
        try:
            local = client.download_artifacts(run_id, f"edgeloop/{name}", str(into))  # type: ignore[attr-defined]
        except (MlflowException, OSError):
            if name in _OPTIONAL:
                continue
            raise ConversionError(f"run {run_id} has no edgeloop/{name}: it was not made by `edgeloop train`") from None
        paths[name] = Path(local)
    return paths


def check_output_directory(out: Path) -> None:
    """Refuse to replace anything but a bundle or an empty directory: `--out .` must not wipe a project."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out} is a file; pass a directory for the bundle")
    if any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise InputError(f"--out {out} exists and is not a bundle; refusing to replace it (pick a new directory)")


def convert_model(reference: str, out: Path, settings: ConvertSettings | None = None) -> Bundle:
    settings = settings or ConvertSettings()
    if not settings.parity_tolerance >= 0:
        raise InputError(f"parity tolerance must be zero or positive, got {settings.parity_tolerance}")
    check_output_directory(out)
    if settings.require_key:  # before anything slow: a missing key must not cost a CI run its conversion
        ensure_signing_key(settings.keys_dir, require=True)
    ensure_tracking_reachable(settings.tracking_uri)
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient(settings.tracking_uri)
    resolved = resolve_reference(client, reference)
    private_key = load_private_key(ensure_signing_key(settings.keys_dir, settings.require_key))
    run = client.get_run(resolved.run_id)
    metrics = {k.removeprefix("holdout_"): v for k, v in run.data.metrics.items() if k.startswith("holdout_")}
    check_metric_floors(metrics, settings.min_metrics)  # before the slow steps
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = _download_artifacts(client, resolved.run_id, Path(scratch))
        schema = orjson.loads(artifacts["feature_schema.json"].read_bytes())
        inputs = [FeatureSpec.model_validate(spec) for spec in schema["inputs"]]
        holdout = pd.read_parquet(artifacts["holdout.parquet"])
        profile = orjson.loads(artifacts["reference_profile.json"].read_bytes())
        predicted_share = orjson.loads(artifacts["prediction_profile.json"].read_bytes())
        importance_file = artifacts.get("permutation_importance.json")
        importance = GlobalImportance.model_validate_json(importance_file.read_bytes()) if importance_file else None
    sklearn_model = mlflow.sklearn.load_model(resolved.model_uri)
    features = holdout[[spec.name for spec in inputs]]
    onnx_model = to_onnx(sklearn_model, inputs, settings.target_opset)
    log_event(logger, "converted to onnx", model=reference, opset=settings.target_opset)

    tags = run.data.tags
    lineage = Lineage(
        run_id=resolved.run_id,
        registered_model=resolved.name if resolved.registered else None,
        model_version=str(resolved.version) if resolved.registered else None,
        data_hash=tags.get("edgeloop.data_sha256", "unknown"),
        data_rows=int(tags.get("edgeloop.data_rows", "0")),
        data_source=tags.get("edgeloop.data_source", "unknown"),
        code_version=tags.get("edgeloop.code_version", "unknown"),
        estimator=tags.get("edgeloop.estimator", type(sklearn_model.steps[-1][1]).__name__),
        metrics={k: float(v) for k, v in metrics.items() if not np.isnan(v)},
    )
    # Golden rows cover every class the model *predicts* on held-out rows, so the replay checks each label.
    predicted = pd.Series(sklearn_model.predict(features), index=features.index)
    golden = golden_rows(features, predicted, settings.golden_samples)
    golden_records = records_of(golden, inputs)
    golden_proba = sklearn_model.predict_proba(golden)
    golden_labels = sklearn_model.predict(golden)
    samples = [
        GoldenSample(inputs=record, label=_plain(label), probabilities=[float(p) for p in proba])
        for record, label, proba in zip(golden_records, golden_labels, golden_proba, strict=True)
    ]
    with atomic_directory(out) as building:
        model_bytes = onnx_model.SerializeToString()  # type: ignore[attr-defined]
        (building / MODEL_FILE).write_bytes(model_bytes)
        opsets = {entry.domain: entry.version for entry in onnx_model.opset_import}  # type: ignore[attr-defined]
        draft = _manifest(resolved, inputs, schema, profile, predicted_share, samples, lineage, settings)
        explainer = checked_explainer(sklearn_model, inputs, profile, features)  # logistic regression only
        draft = draft.model_copy(update={"importance": importance, "explainer": explainer})
        draft = draft.model_copy(
            update={
                "onnx": OnnxInfo(
                    sha256=sha256_file(building / MODEL_FILE),
                    size=len(model_bytes),
                    opset=opsets.get("", settings.target_opset),
                    ml_opset=opsets.get("ai.onnx.ml"),
                )
            }
        )
        unsigned = Bundle(path=building, manifest=draft, signed=False)
        parity = check_runtimes(sklearn_model, unsigned, features, settings.parity_tolerance)
        log_event(
            logger,
            "parity gate passed",
            rows=parity.rows,
            label_mismatches=parity.label_mismatches,
            max_abs_diff=f"{parity.max_abs_diff:.2e}",
            numpy_max_abs_diff=f"{(parity.runtimes or [])[-1].max_abs_diff:.2e}",
            tolerance=f"{parity.tolerance:.0e}",
        )
        manifest = draft.model_copy(update={"parity": parity})
        (building / MANIFEST_FILE).write_bytes(manifest.to_json_bytes())
        (building / SIGNATURE_FILE).write_bytes(sign_bytes(canonical_bytes(manifest), private_key))
        verified = load_bundle(building, public_key_of(private_key))
        worst = replay_golden_samples(verified)
        log_event(logger, "golden samples replayed", samples=len(samples),
                  max_abs_diff=f"{worst['onnxruntime']:.2e}", numpy_max_abs_diff=f"{worst['numpy']:.2e}")  # fmt: skip
    bundle = load_bundle(out, public_key_of(private_key))
    _log_back(client, resolved, bundle, onnx_model)
    log_event(logger, "bundle written", path=str(out), name=manifest.name, version=manifest.version)
    return bundle


def _plain(value: object) -> int | str:
    item = value.item() if hasattr(value, "item") else value
    return item if isinstance(item, int | str) else str(item)


def _manifest(
    resolved: ResolvedModel,
    inputs: list[FeatureSpec],
    schema: dict,
    profile: dict,
    predicted_share: dict,
    samples: list[GoldenSample],
    lineage: Lineage,
    settings: ConvertSettings,
) -> Manifest:
    placeholder = OnnxInfo(sha256="0" * 64, size=0, opset=settings.target_opset)
    return Manifest(
        name=resolved.name,
        version=resolved.version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        onnx=placeholder,
        inputs=inputs,
        target=schema["target"],
        classes=schema["classes"],
        reference_profile=profile,
        prediction_profile=predicted_share,
        golden_samples=samples,
        golden_tolerance=settings.parity_tolerance,
        parity=ParityReport(rows=0, label_mismatches=0, max_abs_diff=0.0, tolerance=settings.parity_tolerance),
        lineage=lineage,
    )


def _log_back(client: object, resolved: ResolvedModel, bundle: Bundle, onnx_model: object) -> None:
    import mlflow

    manifest_digest = hashlib.sha256(canonical_bytes(bundle.manifest)).hexdigest()
    with mlflow.start_run(run_id=resolved.run_id):
        # Requirements stated up front: inferring them loads the model in a subprocess (seconds per convert).
        mlflow.onnx.log_model(onnx_model, name="onnx", pip_requirements=mlflow.onnx.get_default_pip_requirements())
        mlflow.log_artifacts(str(bundle.path), artifact_path="edgeloop/bundle")
        mlflow.set_tag("edgeloop.bundle_sha256", manifest_digest)
    if resolved.registered:
        client.set_model_version_tag(  # type: ignore[attr-defined]
            resolved.name, str(resolved.version), "edgeloop.bundle_sha256", manifest_digest
        )
        client.set_model_version_tag(  # type: ignore[attr-defined]
            resolved.name, str(resolved.version), "edgeloop.onnx_sha256", bundle.manifest.onnx.sha256
        )

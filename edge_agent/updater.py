"""The deployment service: turn a desired state (or a local bundle) into the model being served, or refuse it.

    verify the manifest's signature (before any download) -> version policy (older = refused unless the
    signed manifest says rollback) -> reuse a stored copy or download model.onnx (size cap, retries) ->
    verify sha256 + signature on the assembled bundle -> new onnxruntime session -> golden samples ->
    switch the `current` pointer -> swap the in-memory model -> report (retained state + event)

A shadow (`DesiredState.shadow`) or A/B challenger (`DesiredState.ab`) goes through the same verification
(signature before download, sha256, golden samples) and must be a version of the served model.

Any failure leaves the old model serving and is reported with its reason. `UpdateWorker` runs updates
on its own thread, latest desired state wins, so no transport's network thread ever blocks on a download.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import orjson

from contracts.bundle import Bundle, parse_manifest
from contracts.errors import EdgeloopError, IntegrityError, ModelRejected, ServiceUnavailableError
from contracts.logs import log_event
from contracts.manifest import Manifest, canonical_bytes
from contracts.messages import ABSplit, DesiredState, ReportedState, ShadowBundle
from contracts.runtime import OnnxModel
from contracts.signing import verify_bytes
from edge_agent.download import download_model
from edge_agent.errors import DownloadFailed
from edge_agent.loaded import LoadedModel
from edge_agent.metrics import AgentMetrics
from edge_agent.reporting import Reporter, utc_now
from edge_agent.service import InferenceService
from edge_agent.settings import AgentSettings
from edge_agent.store import ModelStore, SigningKeys

__all__ = ["AGENT_VERSION", "UpdateOutcome", "UpdateWorker", "Updater", "check_version_policy"]

logger = logging.getLogger("edgeloop.agent.updater")
try:
    AGENT_VERSION = version("edgeloop")
except PackageNotFoundError:  # running from a source tree
    AGENT_VERSION = "0+unknown"

Action = Literal["deploy", "rollback", "unchanged"]
_ROLE_KEYS = {"shadow": "shadow", "A/B": "ab"}
"""The key a challenger's rejection event sets to true in its details."""


@dataclass(frozen=True)
class UpdateOutcome:
    status: Literal["deployed", "rolled_back", "unchanged", "rejected"]
    ref: str
    reason: str | None = None
    permanent: bool = True
    """For a rejection: False when the same desired state may succeed later (network, server down)."""


def check_version_policy(current: Manifest | None, new: Manifest) -> Action:
    """Same bundle -> unchanged; an older version of the same model -> refused unless a signed rollback."""
    if current is None:
        return "deploy"
    if (current.name, current.version, current.onnx.sha256) == (new.name, new.version, new.onnx.sha256):
        return "unchanged"
    if new.name == current.name and new.version < current.version:
        if not new.rollback:
            raise ModelRejected(
                f"{new.ref} is older than the current {current.ref}: refused as a replay "
                "(publish a manifest signed with rollback=true to roll back on purpose)"
            )
        return "rollback"
    return "deploy"


class Updater:
    def __init__(
        self,
        settings: AgentSettings,
        store: ModelStore,
        service: InferenceService,
        reporter: Reporter,
        keys: SigningKeys | None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.service = service
        self.reporter = reporter
        self.keys = keys
        self.metrics = metrics
        self.last_error: str | None = None
        self._shadow_from_desired = False
        self._lock = threading.Lock()  # one update at a time, whatever the source

    # -- entry points -------------------------------------------------------------------------------
    def serve_stored(self, bundle: Bundle) -> None:
        """Start serving a bundle that is already the store's current one (agent start, no network)."""
        model = self._load_checked(bundle, fresh=False)
        self.service.swap(model, bundle)
        log_event(logger, "model loaded from the store", model=bundle.manifest.ref, bundle=bundle.path.name)

    def install_local(self, path: Path) -> UpdateOutcome:
        """Install a bundle directory (`--bundle`): verified, copied into the store, served unless older."""
        with self._lock:
            bundle = self.store.install_from_dir(path)
            if self.keys is None:
                log_event(logger, "no public key: signature of the local bundle not checked", level=logging.WARNING)
            current = self.service.current
            try:
                action = check_version_policy(current.manifest if current else None, bundle.manifest)
            except ModelRejected as exc:
                log_event(logger, "local bundle kept in store, not served", level=logging.WARNING, reason=exc.message)
                return UpdateOutcome("rejected", bundle.manifest.ref, exc.message)
            if action == "unchanged":
                return UpdateOutcome("unchanged", bundle.manifest.ref)
            return self._switch(bundle, action, fresh=False, details={"source": str(path)})

    def apply(self, desired: DesiredState) -> UpdateOutcome:
        """Apply a desired state; never raises, the outcome says what happened and is reported."""
        with self._lock:
            ref = f"{desired.manifest.get('name')}/{desired.manifest.get('version')}"
            try:
                manifest = self._verified_manifest(desired.manifest, desired.signature)
                ref = manifest.ref
                current = self.service.current
                action = check_version_policy(current.manifest if current else None, manifest)
                if action == "unchanged":
                    self._report("serving")
                    outcome = self._count(UpdateOutcome("unchanged", ref))
                else:
                    self.last_error = None  # a new attempt; the reported error is the outcome of this one
                    self._report("updating")
                    bundle, fresh = self._fetch(desired.model_url, desired.signature, manifest)
                    outcome = self._switch(bundle, action, fresh, {"rollout_id": desired.rollout_id})
            except DownloadFailed as exc:
                return self._reject(ref, exc.message, exc.permanent)
            except ServiceUnavailableError as exc:
                return self._reject(ref, exc.message, permanent=False)
            except EdgeloopError as exc:
                return self._reject(ref, exc.message, permanent=True)
            except Exception as exc:  # a bug must not stop the agent serving the old model
                logger.exception("update failed unexpectedly")
                return self._reject(ref, f"unexpected {type(exc).__name__}: {exc}", permanent=False)
            for extra in (self._apply_shadow(desired), self._apply_ab(desired)):
                if extra is not None and extra.status == "rejected":
                    return extra
            return outcome

    def _challenger(
        self, spec: ShadowBundle, running: LoadedModel | None, role: str
    ) -> tuple[Manifest, tuple[OnnxModel, Bundle] | None] | UpdateOutcome:
        """Verify, fetch and load a challenger bundle (shadow or A/B) exactly like the main bundle: (its
        manifest, (model, bundle) or None when `running` is that bundle already), or the rejection."""
        ref = f"{spec.manifest.get('name')}/{spec.manifest.get('version')}"
        try:
            manifest = self._verified_manifest(spec.manifest, spec.signature)
            ref = manifest.ref
            current = self.service.current
            if current is not None and manifest.name != current.manifest.name:
                noun = "a shadow" if role == "shadow" else "an A/B challenger"
                raise ModelRejected(
                    f"{role} {manifest.ref}: {noun} must be a version of the served model {current.manifest.name}"
                )
            if running is not None and (running.manifest.version, running.manifest.onnx.sha256) == (
                manifest.version,
                manifest.onnx.sha256,
            ):
                return manifest, None
            bundle, fresh = self._fetch(spec.model_url, spec.signature, manifest)
            model = self._load_checked(bundle, fresh)
        except DownloadFailed as exc:
            return self._reject(ref, f"{role}: {exc.message}", exc.permanent, role=role)
        except ServiceUnavailableError as exc:
            return self._reject(ref, f"{role}: {exc.message}", permanent=False, role=role)
        except EdgeloopError as exc:
            return self._reject(ref, f"{role}: {exc.message}", permanent=True, role=role)
        except Exception as exc:  # a bug must not stop the agent serving the champion
            logger.exception("challenger update failed unexpectedly")
            return self._reject(ref, f"{role}: unexpected {type(exc).__name__}: {exc}", permanent=False, role=role)
        return manifest, (model, bundle)

    def _apply_ab(self, desired: DesiredState) -> UpdateOutcome | None:
        """Split traffic with the desired state's A/B challenger, or stop the split a previous desired state
        started. None when nothing changed."""
        spec: ABSplit | None = desired.ab
        running = self.service.ab
        if spec is None:
            if running is None:
                return None
            self.service.set_ab(None)
            manifest = running.model.manifest
            self._publish_event("deployed", model_name=manifest.name, model_version=manifest.version,
                                details={"ab": "stopped", "rollout_id": desired.rollout_id})  # fmt: skip
            return UpdateOutcome("deployed", f"A/B {manifest.ref} stopped")
        found = self._challenger(spec, None if running is None else running.model, "A/B")
        if isinstance(found, UpdateOutcome):
            return found
        manifest, loaded = found
        if loaded is None:  # the same challenger: only the split may have changed
            assert running is not None
            if (running.fraction, running.key_field) == (spec.fraction, spec.key_field):
                return None
            loaded = (running.model.model, running.model.bundle)
        self.service.set_ab(loaded[0], loaded[1], spec.fraction, spec.key_field)
        self._publish_event("deployed", model_name=manifest.name, model_version=manifest.version,
                            details={"ab": "started", "rollout_id": desired.rollout_id, "fraction": spec.fraction,
                                     "key_field": spec.key_field, "sha256": manifest.onnx.sha256})  # fmt: skip
        return UpdateOutcome("deployed", f"A/B {manifest.ref} on {spec.fraction:g} of the keys")

    def _apply_shadow(self, desired: DesiredState) -> UpdateOutcome | None:
        """Run the desired state's challenger in shadow (verified like the main bundle), or stop the shadow a
        previous desired state started. A shadow set by the `shadow_bundle` setting is left alone when the
        desired state names none. None when nothing changed."""
        spec = desired.shadow
        running = self.service.shadow
        if spec is None:
            if running is None or not self._shadow_from_desired:
                return None
            self.service.set_shadow(None)
            self._shadow_from_desired = False
            self._publish_event("deployed", model_name=running.manifest.name, model_version=running.manifest.version,
                                details={"shadow": "stopped", "rollout_id": desired.rollout_id})  # fmt: skip
            return UpdateOutcome("deployed", f"shadow {running.manifest.ref} stopped")
        found = self._challenger(spec, running, "shadow")
        if isinstance(found, UpdateOutcome):
            return found
        manifest, loaded = found
        if loaded is None:
            self._shadow_from_desired = True
            return None
        self.service.set_shadow(*loaded)
        self._shadow_from_desired = True
        self._publish_event("deployed", model_name=manifest.name, model_version=manifest.version,
                            details={"shadow": "started", "rollout_id": desired.rollout_id,
                                     "sha256": manifest.onnx.sha256})  # fmt: skip
        return UpdateOutcome("deployed", f"shadow {manifest.ref}")

    def reported_state(self, state: Literal["serving", "updating", "no_model"] | None = None) -> ReportedState:
        current = self.service.current
        manifest = current.manifest if current else None
        return ReportedState(
            device_id=self.settings.device_id,
            group=self.settings.group,
            model_name=manifest.name if manifest else None,
            model_version=manifest.version if manifest else None,
            bundle_sha256=manifest.onnx.sha256 if manifest else None,
            state=state or ("serving" if manifest else "no_model"),
            last_error=self.last_error,
            agent_version=AGENT_VERSION,
            updated_at=utc_now(),
            labels=self.settings.labels,
            trusted_keys=list(self.keys.current().ids) if self.keys is not None else [],
        )

    # -- steps --------------------------------------------------------------------------------------
    def _verified_manifest(self, raw: dict[str, object], signature: str) -> Manifest:
        manifest = parse_manifest(orjson.dumps(raw), "desired state manifest")
        if self.keys is None:
            raise IntegrityError("no public key configured (EDGELOOP_AGENT_PUBLIC_KEY): updates cannot be verified")
        verify_bytes(canonical_bytes(manifest), signature.encode(), self.keys.current())
        if manifest.onnx.size > self.settings.download_max_bytes:
            raise ModelRejected(
                f"{manifest.ref}: model.onnx is {manifest.onnx.size} bytes, over download_max_bytes "
                f"({self.settings.download_max_bytes})"
            )
        return manifest

    def _fetch(self, model_url: str, signature: str, manifest: Manifest) -> tuple[Bundle, bool]:
        """The stored copy if there is one (rollback without network), else download and assemble."""
        stored = self.store.find(manifest)
        if stored is not None:
            return stored, False
        part = self.store.new_temp_file()
        try:
            s = self.settings
            download_model(model_url, part, manifest.onnx.size, manifest.onnx.sha256,
                           s.download_timeout_s, s.download_retries, s.download_backoff_s)  # fmt: skip
            bundle = self.store.install_parts(manifest.to_json_bytes(), signature.encode(), part, manifest)
        finally:
            part.unlink(missing_ok=True)
        return bundle, True

    def _load_checked(self, bundle: Bundle, fresh: bool) -> OnnxModel:
        """Load `bundle` and replay its golden samples; a bundle just downloaded (`fresh`) that fails is removed
        from the store again."""
        try:
            model = OnnxModel.load(
                bundle, intra_op_threads=self.settings.intra_op_threads, runtime=self.settings.runtime
            )
            model.check_golden_samples()
        except EdgeloopError:
            if fresh:
                self.store.remove(bundle)
            raise
        return model

    def _switch(self, bundle: Bundle, action: Action, fresh: bool, details: dict[str, object]) -> UpdateOutcome:
        model = self._load_checked(bundle, fresh)
        self.store.activate(bundle)
        previous = self.service.swap(model, bundle)
        self.last_error = None
        status: Literal["deployed", "rolled_back"] = "rolled_back" if action == "rollback" else "deployed"
        manifest = bundle.manifest
        details = {**details, "sha256": manifest.onnx.sha256, "previous": previous.manifest.ref if previous else None}
        log_event(logger, f"model {status}", model=manifest.ref, previous=details["previous"])
        self._report("serving")
        self._publish_event(status, model_name=manifest.name, model_version=manifest.version, details=details)
        return self._count(UpdateOutcome(status, manifest.ref))

    def _reject(self, ref: str, reason: str, permanent: bool, role: str | None = None) -> UpdateOutcome:
        self.last_error = reason
        log_event(logger, "update rejected", level=logging.WARNING, model=ref, reason=reason)
        name, _, number = ref.partition("/")
        self._report()  # first: the retained state needs no disk, so it reports even a full one
        self._publish_event(
            "rejected",
            model_name=name or None,
            model_version=int(number) if number.isdigit() else None,
            reason=reason,
            details={"permanent": permanent, _ROLE_KEYS[role]: True} if role else {"permanent": permanent},
        )
        return self._count(UpdateOutcome("rejected", ref, reason, permanent))

    def _report(self, state: Literal["serving", "updating", "no_model"] | None = None) -> None:
        self.reporter.publish_reported(self.reported_state(state))

    def _publish_event(self, kind: str, **fields: object) -> None:
        """Events go through the on-disk outbox; when it cannot take one (disk full) the update's outcome
        stands, the failure is logged and the retained reported state still carries `last_error`."""
        try:
            self.reporter.publish_event(kind, **fields)
        except Exception as exc:
            log_event(logger, "event not stored", level=logging.ERROR, kind=kind, error=f"{type(exc).__name__}: {exc}")

    def _count(self, outcome: UpdateOutcome) -> UpdateOutcome:
        if self.metrics is not None:
            self.metrics.updates.labels(outcome.status).inc()
        return outcome


def _desired_key(desired: DesiredState) -> str:
    shadow, ab = desired.shadow, desired.ab
    extra = "" if shadow is None else f"\n{shadow.signature}\n{shadow.model_url}"
    if ab is not None:
        extra += f"\nab\n{ab.signature}\n{ab.model_url}\n{ab.fraction!r}\n{ab.key_field}"
    return hashlib.sha256(f"{desired.signature}\n{desired.model_url}{extra}".encode()).hexdigest()


class UpdateWorker:
    """Applies desired states on one background thread; a newer desired state replaces a pending one.

    A desired state that was applied, or refused for good, is not applied again when the broker
    redelivers it (retained messages come back on every reconnect); a transient failure is retried then.
    """

    def __init__(self, updater: Updater) -> None:
        self.updater = updater
        self._pending: DesiredState | None = None
        self._done: str | None = None
        self._busy = False
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="edgeloop-updater", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, desired: DesiredState) -> None:
        with self._cond:
            self._pending = desired
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is pending or running (for orderly shutdown and tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._stopping)
                if self._stopping:
                    return
                desired, self._pending = self._pending, None
                self._busy = True
            try:
                assert desired is not None
                key = _desired_key(desired)
                if key != self._done:
                    outcome = self.updater.apply(desired)
                    self._done = key if outcome.status != "rejected" or outcome.permanent else None
            except Exception:  # the worker must outlive any failure, or no later update is ever applied
                logger.exception("update worker: unexpected failure")
                self._done = None
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

"""Staged rollouts: canary devices first, a soak watched through what they report, then the whole group,
or an automatic rollback that says why.

    deploy   -> retained DesiredState (signed manifest + model_url) on each canary device's topic
                (a staged rollout, `--stages 1%,10%,50%,100%`: each stage is a canary that widens; stages.py
                decides its steps, pacing.py its rate limit and abort rule, `_advance_stages` applies them)
    canary   -> every canary device reports the version (else rollback after rollout_confirm_timeout_s)
    soaking  -> checks.check_canary every tick; a failure rolls back at once
    promoted -> retained DesiredState on the group topic, then the device-level overrides of the group are
                cleared (empty retained payload) so every device follows the group again
    rolled_back -> the previous version's manifest, re-signed with rollback=true (devices refuse an older
                version otherwise), on the canary topics (or the group topic after a promotion)

Modes `shadow` (the canary serves the champion with the challenger in shadow; its measured accuracy decides
after the soak) and `ab` (an A/B split on the canary; auto-decided when opted in): how the controller advances each
mode is in `modes/` (one class per mode, one interface: `modes/base.py`): the controller applies the
decision a mode returns; the desired states (and the re-signed rollback) are built in `desired`.

Every step is recorded in `rollouts` and in the audit log with who and why (and the accuracies); after a
promotion or a rollback the MLflow registry's aliases are told what the group runs (`fleet_aliases`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cloud_sync.fleet.stats import device_list
from cloud_sync.ingest.publisher import MqttPublisher
from cloud_sync.rollouts import overrides, selectors, stages
from cloud_sync.rollouts import pacing as pace
from cloud_sync.rollouts import status as rollout_status
from cloud_sync.rollouts.checks import Limits, check_canary
from cloud_sync.rollouts.desired import desired_state, rollback_state
from cloud_sync.rollouts.fleet_aliases import FleetAliases, NoRegistry
from cloud_sync.rollouts.model import ACTIVE, Rollout, RolloutRequest, State
from cloud_sync.rollouts.modes.ab import ABTest
from cloud_sync.rollouts.modes.base import Decision, ModeView, RolloutMode
from cloud_sync.rollouts.modes.serving import Serving
from cloud_sync.rollouts.modes.shadow import Shadow
from cloud_sync.rollouts.stages import parse_canary
from cloud_sync.store import audit
from cloud_sync.store.bundles import BundleInfo, BundleRegistry
from cloud_sync.store.db import Store, rollouts
from contracts.errors import ConflictError, EdgeloopError, InputError, NotFoundError
from contracts.logs import log_event
from contracts.messages import DesiredState
from contracts.topics import group_desired

__all__ = ["MODES", "Rollouts", "parse_canary"]

logger = logging.getLogger("edgeloop.cloud.rollouts")
NO_CANARY = "no canary devices: published to the whole group"
MODES: dict[str, RolloutMode] = {mode.name: mode for mode in (Serving(), Shadow(), ABTest())}
"""Every rollout mode by name; a new mode is a class in modes/ and one entry here."""


class Rollouts:
    def __init__(
        self,
        store: Store,
        registry: BundleRegistry,
        publisher: MqttPublisher,
        *,
        base_url: str,
        keys_dir: Path,
        limits: Limits | None = None,
        confirm_timeout_s: float = 300.0,
        aliases: FleetAliases | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.publisher = publisher
        self.base_url = base_url.rstrip("/")
        self.keys_dir = keys_dir
        self.limits = limits or Limits()
        self.confirm_timeout_s = confirm_timeout_s
        self.view = ModeView(store, self.limits, confirm_timeout_s)
        self.aliases: FleetAliases = aliases or NoRegistry()
        """Registry aliases told what each group runs after every promotion and rollback (fleet_aliases)."""
        self._lock = threading.RLock()
        self._published_to_group: set[str] = set()
        """Rollouts whose version this process already published on their group's topic (see _publish_to_group)."""
        self.last_report: dict[str, dict[str, Any]] = {}
        """What each rollout's mode reported at the controller's last tick (A/B: per arm), for `per_device=False`."""
        self.last_checks: dict[str, str] = {}
        """A staged rollout's checks at the controller's last tick ("passing" or the failure), for status."""

    # -- commands -----------------------------------------------------------------------------------
    def deploy(self, request: RolloutRequest, *, actor: str = "operator") -> dict[str, Any]:
        """Start a rollout: publish to the canary (or, with none, to the whole group at once)."""
        mode = MODES[request.mode]
        name, version, group = request.model_name, request.model_version, request.group
        with self._lock:
            info = self.registry.get(name, version)
            active = self._rollouts(group=group, states=ACTIVE)
            if active:
                raise InputError(
                    f"rollout {active[0].id} is still in progress in group {group}: promote or roll it back first"
                )
            targets = selectors.members(device_list(self.store, group), request.selector)
            if request.selector and not targets:
                raise InputError(f"--selector {request.selector} matches no device of group {group}")

            def represent(canary: list[str]) -> list[str]:  # --canary-per-label: each label value in it
                return selectors.with_each_label(canary, targets, request.canary_per_label)

            planned = stages.plan(request.stages, list(targets), represent)
            chosen = [] if request.stages else represent(parse_canary(request.canary, list(targets)))
            previous = self._previous_version(group, name)
            if previous == version:
                raise InputError(f"group {group} already runs {name}/{version}")
            if previous is not None and version < previous:
                raise ConflictError(
                    f"group {group} runs {name}/{previous}: {name}/{version} is older and devices refuse an older "
                    "version (replay protection); roll back a rollout in progress with `edgeloop rollout rollback`, "
                    "or register the older model again as a new version"
                )
            champion = None
            if mode.beside:
                if previous is None:
                    raise InputError(f"{mode.label} needs a champion: group {group} runs no version of {name}")
                if not chosen:
                    raise InputError(f"{mode.label} needs canary devices (--canary 0 leaves none)")
                champion = self.registry.get(name, previous)
            rollout = Rollout(
                id=f"r-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}",
                group=group,
                model_name=name,
                model_version=version,
                previous_version=previous,
                canary=tuple(chosen),
                soak_s=float(request.soak_s),
                state="canary",
                reason=None,
                actor=actor,
                created_at=time.time(),
                mode=mode.name,
                selector=request.selector,
                stages=request.stages,
                stage_devices=planned,
                pacing=request.pacing,
            )
            if request.stages:  # the first stage's devices are switched by the controller's step, at once
                rollout = replace(rollout, next_switch_at=rollout.created_at if request.pacing else None)
                self._record_start(rollout, request, self._describe_stages(rollout))
                self._advance(rollout.id, rollout.created_at)
                return self.status(rollout.id)
            desired = mode.publishes(
                request, new=info, champion=champion, base_url=self.base_url, rollout_id=rollout.id
            ).model_dump_json()
            overrides.publish(
                self.store, self.publisher, group=group, names=chosen, payload=desired, rollout_id=rollout.id
            )
            self._record_start(rollout, request, mode.describe(request, canary=chosen, previous=previous))
            if not chosen:
                self._publish_to_group(rollout, actor=actor, reason=NO_CANARY)
            return self.status(rollout.id)

    def promote(
        self,
        rollout_id: str,
        *,
        actor: str = "operator",
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            rollout = self._get(rollout_id)
            if not rollout.active:
                raise InputError(f"rollout {rollout_id} is {rollout.state}; only an active rollout can be promoted")
            reason = reason or "promoted by hand before the soak ended"
            self._publish_to_group(rollout, actor=actor, reason=reason, details=details)
            return self.status(rollout_id)

    def _publish_to_group(
        self, rollout: Rollout, *, actor: str, reason: str, details: dict[str, Any] | None = None
    ) -> None:
        """The group's desired state becomes the rollout's version; the rollout ends promoted (compare-and-set:
        of two replicas doing this at once, one records it, and the other's publish repeats the same state)."""
        info = self.registry.get(rollout.model_name, rollout.model_version)
        desired = self._desired(info, rollout.id).model_dump_json()
        if rollout.selector:  # only the matching devices: their own topics, the group topic stays as it is
            self._publish_to_selected(rollout, desired)
        else:
            # Once per rollout and process: a retry after the overrides' clearing timed out (a broker slow to
            # acknowledge thousands) clears only what is still recorded, instead of fanning the group's retained
            # state out to every device again each tick.
            first = rollout.id not in self._published_to_group
            if first:
                self.publisher.publish(group_desired(rollout.group), desired)
                self._published_to_group.add(rollout.id)
            self._clear_overrides(rollout.group, list(rollout.canary) if first else [])
        self._finish(rollout, "promoted", reason=reason, actor=actor, action="promote", details=details)

    def rollback(
        self,
        rollout_id: str,
        *,
        actor: str = "operator",
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            rollout = self._get(rollout_id)
            if rollout.state not in (*ACTIVE, "promoted"):
                raise InputError(f"rollout {rollout_id} is {rollout.state}; there is nothing to roll back")
            reason = reason or "rolled back by hand"
            name, previous, group, canary = rollout.model_name, rollout.previous_version, rollout.group, rollout.canary
            promoted = rollout.state == "promoted"
            if MODES[rollout.mode].beside and not promoted and previous is not None:
                # The canary served the champion all along: the same version without a challenger stops it.
                desired = self._desired(self.registry.get(name, previous), rollout_id).model_dump_json()
                overrides.publish(
                    self.store, self.publisher, group=group, names=canary, payload=desired, rollout_id=rollout_id
                )
                self._finish(rollout, "rolled_back", reason=reason, actor=actor, action="rollback", details=details)
                return self.status(rollout_id)
            if previous is None:
                self._clear_overrides(group, list(canary))
                note = f"{reason} (no previous version known: canary overrides cleared, devices keep what they run)"
                self._finish(rollout, "rolled_back", reason=note, actor=actor, action="rollback")
                return self.status(rollout_id)
            try:
                back = rollback_state(
                    self.base_url, self.registry.get(name, previous), rollout_id, keys_dir=self.keys_dir
                )
            except EdgeloopError as exc:
                failed = f"{reason}; rollback impossible: {exc.message}"
                self._finish(rollout, "failed", reason=failed, actor=actor, action="rollback failed")
                raise
            if promoted and rollout.selector:
                self._publish_to_selected(rollout, back.model_dump_json())
            elif promoted:
                self.publisher.publish(group_desired(group), back.model_dump_json())
                self._clear_overrides(group, [])
            else:
                payload = back.model_dump_json()
                overrides.publish(
                    self.store, self.publisher, group=group, names=canary, payload=payload, rollout_id=rollout_id
                )
            self._finish(rollout, "rolled_back", reason=reason, actor=actor, action="rollback", details=details)
            return self.status(rollout_id)

    # -- controller ---------------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """Advance every active rollout once (the controller thread calls this every rollout_tick_s)."""
        for rollout in self._rollouts(states=ACTIVE):
            try:
                self._advance(rollout.id, time.time() if now is None else now)
            except EdgeloopError as exc:
                log_event(
                    logger,
                    "rollout step failed, retrying",
                    level=logging.WARNING,
                    rollout=rollout.id,
                    error=exc.message,
                )

    def run(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        while not stop.wait(interval_s):
            try:
                self.tick()
            except Exception:
                logger.exception("rollout controller tick failed")

    def _advance(self, rollout_id: str, now: float) -> None:
        """Check the canary, then apply what the rollout's mode decides."""
        with self._lock:
            rollout = self._get(rollout_id)
            if not rollout.active:
                return
            if rollout.stages:
                self._advance_stages(rollout, now)
                return
            if not rollout.canary:
                # The replica that took the request promotes it at once; the leader only finishes what a crash
                # between its insert and its publish left (never a soak without a canary to watch).
                self._publish_to_group(rollout, actor="controller", reason=NO_CANARY)
                return
            failure = check_canary(self.store, self.registry, rollout, now=now, limits=self.limits)
            decision = (
                Decision("roll_back", failure) if failure else MODES[rollout.mode].advance(self.view, rollout, now)
            )
            self._apply(rollout, decision, now)

    def _advance_stages(self, rollout: Rollout, now: float) -> None:
        """One step of a staged rollout (stages.py): checks over every device switched so far, the abort rule,
        then switch the next devices, soak, widen, promote or roll back."""
        pacing = rollout.pacing
        timeout = (pacing.confirm_timeout_s if pacing else None) or self.confirm_timeout_s
        seen = pace.progress(self.store, rollout, now=now, timeout_s=timeout)
        strict = pacing is None or pacing.abort_failed_pct is None
        failure = None
        if rollout.canary:
            failure = check_canary(
                self.store, self.registry, rollout, now=now, limits=self.limits, count_rejections=strict
            )
        self.last_checks[rollout.id] = failure or "passing"
        step = stages.next_step(rollout, seen, failure=failure, now=now)
        if step.action == "switch":
            payload = self._desired(self.registry.get(rollout.model_name, rollout.model_version), rollout.id)
            overrides.publish(  # before recording: a repeated publish of the same retained state is harmless
                self.store,
                self.publisher,
                group=rollout.group,
                names=step.devices,
                payload=payload.model_dump_json(),
                rollout_id=rollout.id,
            )
            stages.record_switch(self.store, rollout, step, now=now)
        elif step.action == "widen":
            stages.record_widen(self.store, rollout, step, now=now)
        elif step.action != "wait":
            self._apply(rollout, Decision(step.action, step.reason), now)

    def _apply(self, rollout: Rollout, decision: Decision, now: float) -> None:
        if decision.report is not None:
            self.last_report[rollout.id] = decision.report
        if decision.action == "soak":
            with self.store.begin() as conn:  # compare-and-set: a staged rollout's stage soaks once
                conn.execute(
                    rollouts.update()
                    .where(rollouts.c.id == rollout.id, rollouts.c.state == rollout.state)
                    .values(state="soaking", soak_started_at=now)
                )
            log_event(logger, "rollout soaking", rollout=rollout.id, soak_s=rollout.soak_s, why=decision.reason)
        elif decision.action == "promote":
            self.promote(rollout.id, actor="controller", reason=decision.reason, details=decision.details)
        elif decision.action == "roll_back":
            self.rollback(rollout.id, actor="controller", reason=decision.reason, details=decision.details)

    # -- queries ------------------------------------------------------------------------------------
    def recent(self, group: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return [rollout_status.public(rollout) for rollout in self._rollouts(group=group, limit=limit)]

    def latest(self, group: str | None = None) -> dict[str, Any]:
        found = self._rollouts(group=group, limit=1)
        if not found:
            raise NotFoundError("no rollout yet" + (f" in group {group}" if group else ""))
        return self.status(found[0].id)

    def status(self, rollout_id: str, per_device: bool = True) -> dict[str, Any]:
        """The rollout and each device of its group; `per_device=False`: only the counts `group_devices` and
        `on_target`, by one aggregate query (for polling a group of thousands)."""
        rollout = self._get(rollout_id)
        stage = None
        if rollout.stages:
            pacing = rollout.pacing
            timeout = (pacing.confirm_timeout_s if pacing else None) or self.confirm_timeout_s
            live = rollout.active and per_device  # counts-only polls of a large group read no progress
            seen = pace.progress(self.store, rollout, now=time.time(), timeout_s=timeout) if live else None
            checks = self.last_checks.get(rollout_id) if rollout.active else rollout.reason
            stage = stages.report(rollout, seen, checks=checks)
        return rollout_status.report(
            self.view,
            rollout,
            MODES[rollout.mode],
            per_device=per_device,
            last_report=self.last_report.get(rollout_id),
            stage=stage,
        )

    def get(self, rollout_id: str) -> Rollout:
        """One rollout, typed; NotFoundError for an unknown id."""
        return self._get(rollout_id)

    # -- helpers ------------------------------------------------------------------------------------
    def _desired(self, info: BundleInfo, rollout_id: str) -> DesiredState:
        return desired_state(self.base_url, info, rollout_id)

    def _describe_stages(self, rollout: Rollout) -> str:
        """A staged rollout's plan, for the audit log's deploy entry."""
        plan = ", ".join(
            f"{share:g}% (+{len(names)})" for share, names in zip(rollout.stages, rollout.stage_devices, strict=True)
        )
        why = f"stages {plan}, soak {rollout.soak_s:g}s each"
        pacing = rollout.pacing
        if pacing is not None and pacing.max_per_minute is not None:
            why += f", at most {pacing.max_per_minute} devices a minute"
        if pacing is not None and pacing.abort_failed_pct is not None:
            why += f", abort above {pacing.abort_failed_pct:g}% failed after {pacing.abort_min_devices} devices"
        return why

    def _record_start(self, rollout: Rollout, request: RolloutRequest, why: str) -> None:
        details: dict[str, Any] = {
            "rollout_id": rollout.id,
            "previous_version": rollout.previous_version,
            "canary": list(rollout.canary),
            "mode": rollout.mode,
        }
        if rollout.stages:
            details |= {"stages": list(rollout.stages), "pacing": rollout.pacing and rollout.pacing.as_json()}
        if request.ab_fraction is not None or request.ab_key:
            details |= {"ab_fraction": request.ab_fraction, "ab_key": request.ab_key}
        if request.selector or request.canary_per_label:
            details |= {"selector": request.selector, "canary_per_label": request.canary_per_label}
        with self.store.begin() as conn:
            conn.execute(rollouts.insert().values(**rollout.as_row()))
            target = f"{rollout.model} -> group {rollout.group}"
            audit.record(conn, rollout.actor, "deploy", target=target, reason=why, details=details)
        log_event(
            logger,
            "rollout started",
            rollout=rollout.id,
            model=rollout.model,
            group=rollout.group,
            canary=",".join(rollout.canary) or "-",
            mode=rollout.mode,
        )

    def _publish_to_selected(self, rollout: Rollout, payload: str) -> None:
        """A selector rollout's group-wide step: device-level desired states on the devices matching now."""
        names = list(selectors.members(device_list(self.store, rollout.group), rollout.selector))
        overrides.publish(
            self.store, self.publisher, group=rollout.group, names=names, payload=payload, rollout_id=rollout.id
        )

    def _clear_overrides(self, group: str, extra: list[str]) -> None:
        """Empty retained payloads on the device-level desired topics that hold one (recorded when published),
        so each device follows its group; one batch, not a round trip per device."""
        cleared = overrides.clear(self.store, self.publisher, group, extra=extra)
        log_event(logger, "device overrides cleared", group=group, devices=cleared)

    def _previous_version(self, group: str, name: str) -> int | None:
        """What the group runs: the last promoted rollout of `name`, else the version most of its devices report."""
        for rollout in self._rollouts(group=group, states=("promoted",)):
            if rollout.model_name == name and not rollout.selector:  # a selector rollout reached only some
                return rollout.model_version
        for rollout in self._rollouts(group=group, states=("rolled_back",)):
            if rollout.model_name == name and rollout.previous_version is not None:
                return rollout.previous_version
        versions = Counter(
            d["model_version"]
            for d in device_list(self.store, group)
            if d["model_name"] == name and d["model_version"] is not None
        )
        return versions.most_common(1)[0][0] if versions else None

    def _finish(
        self,
        rollout: Rollout,
        state: State,
        *,
        reason: str,
        actor: str,
        action: str,
        details: dict[str, Any] | None = None,
    ) -> Rollout:
        now = time.time()
        details = {
            "rollout_id": rollout.id,
            "previous_version": rollout.previous_version,
            "canary": list(rollout.canary),
            **(details or {}),
        }
        with self.store.begin() as conn:
            # Compare-and-set on the state read: of two replicas finishing one rollout (a leader change while a
            # tick ran, two operators), one changes the row and audits; the other changes nothing.
            changed = conn.execute(
                rollouts.update()
                .where(rollouts.c.id == rollout.id, rollouts.c.state == rollout.state)
                .values(state=state, reason=reason, finished_at=now)
            ).rowcount
            if changed:
                target = f"{rollout.model} in group {rollout.group}"
                audit.record(conn, actor, action, target=target, reason=reason, details=details, at=now)
        if not changed:
            log_event(logger, "rollout already finished elsewhere", rollout=rollout.id, wanted=state, actor=actor)
            return self._get(rollout.id)
        level = logging.WARNING if state != "promoted" else logging.INFO
        log_event(logger, f"rollout {state}", level=level, rollout=rollout.id, reason=reason, actor=actor)
        runs = rollout.model_version if state == "promoted" else rollout.previous_version
        if state in ("promoted", "rolled_back") and runs is not None and not rollout.selector:  # the group runs
            lineage = self.registry.get(rollout.model_name, runs).manifest.lineage
            version = int(lineage.model_version) if lineage.model_version else runs
            self.aliases.group_runs(lineage.registered_model or rollout.model_name, version, rollout.group)
        return replace(rollout, state=state, reason=reason, finished_at=now)

    def _get(self, rollout_id: str) -> Rollout:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(rollouts).where(rollouts.c.id == rollout_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"rollout {rollout_id} not found; `edgeloop rollout status` lists them")
        return Rollout.from_row(row)

    def _rollouts(
        self, *, group: str | None = None, states: tuple[str, ...] | None = None, limit: int | None = None
    ) -> list[Rollout]:
        query = sa.select(rollouts).order_by(rollouts.c.created_at.desc())
        if group:
            query = query.where(rollouts.c.group_name == group)
        if states:
            query = query.where(rollouts.c.state.in_(states))
        if limit:
            query = query.limit(limit)
        with self.store.engine.connect() as conn:
            return [Rollout.from_row(row) for row in conn.execute(query).mappings()]

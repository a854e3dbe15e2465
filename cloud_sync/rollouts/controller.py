"""Staged rollouts: canary devices first, a soak watched through what they report, then the whole group,
or an automatic rollback that says why.

    deploy   -> retained DesiredState (signed manifest + model_url) on each canary device's topic
    canary   -> every canary device reports the version (else rollback after rollout_confirm_timeout_s)
    soaking  -> checks.check_canary every tick; a failure rolls back at once
    promoted -> retained DesiredState on the group topic, then the device-level overrides of the group are
                cleared (empty retained payload) so every device follows the group again
    rolled_back -> the previous version's manifest, re-signed with rollback=true (devices refuse an older
                version otherwise), on the canary topics (or the group topic after a promotion)

Modes `shadow` (the canary serves the champion with the challenger in shadow; its measured accuracy decides
after the soak) and `ab` (an A/B split on the canary; promotion is manual): how the controller advances each
mode is in `modes.advance`; the desired states (and the re-signed rollback) are built in `desired`.

Every step is recorded in `rollouts` and in the audit log with who and why (and the accuracies).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cloud_sync.fleet.stats import device_list
from cloud_sync.ingest.publisher import MqttPublisher
from cloud_sync.rollouts import overrides
from cloud_sync.rollouts import status as rollout_status
from cloud_sync.rollouts.checks import Limits, check_canary
from cloud_sync.rollouts.desired import desired_state, rollback_state
from cloud_sync.rollouts.modes.advance import advance_ab, advance_serving, advance_shadow
from cloud_sync.store import audit
from cloud_sync.store.bundles import BundleInfo, BundleRegistry
from cloud_sync.store.db import Store, rollouts
from contracts.errors import ConflictError, EdgeloopError, InputError, NotFoundError
from contracts.logs import log_event
from contracts.messages import DesiredState
from contracts.topics import group_desired, validate_id

__all__ = ["ACTIVE", "MODES", "Rollouts", "parse_canary"]

logger = logging.getLogger("edgeloop.cloud.rollouts")
ACTIVE = ("canary", "soaking")
MODES = ("serving", "shadow", "ab")
_BESIDE = ("shadow", "ab")
"""Modes where the canary keeps serving the champion with the challenger beside it."""


def parse_canary(spec: str | None, group_devices: list[str]) -> list[str]:
    """`25%` or `25` -> that share of the group's known devices (at least one); `a,b` -> those devices."""
    spec = (spec or "10%").strip()
    number = spec.removesuffix("%")
    if number.replace(".", "", 1).isdigit():
        share = float(number)
        if not 0 <= share <= 100:
            raise InputError(f"--canary {spec}: a percentage must be between 0 and 100")
        if share == 0 or not group_devices:
            return []
        count = max(1, round(len(group_devices) * share / 100))
        return sorted(group_devices)[:count]
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in group_devices]
    if unknown:
        known = ", ".join(sorted(group_devices)) or "none yet"
        raise InputError(f"--canary: {', '.join(unknown)} not known in this group (known: {known})")
    return names


class Rollouts:
    def __init__(
        self,
        store: Store,
        registry: BundleRegistry,
        publisher: MqttPublisher,
        base_url: str,
        keys_dir: Path,
        limits: Limits | None = None,
        confirm_timeout_s: float = 300.0,
    ) -> None:
        self.store = store
        self.registry = registry
        self.publisher = publisher
        self.base_url = base_url.rstrip("/")
        self.keys_dir = keys_dir
        self.limits = limits or Limits()
        self.confirm_timeout_s = confirm_timeout_s
        self._lock = threading.RLock()
        self.ab_last: dict[str, dict[str, Any]] = {}
        """The per-arm report of each A/B rollout at the controller's last tick (for `per_device=False`)."""

    # -- commands -----------------------------------------------------------------------------------
    def deploy(
        self,
        name: str,
        version: int,
        group: str,
        canary: str | None = None,
        soak_s: float = 600.0,
        actor: str = "operator",
        mode: str = "serving",
        ab_fraction: float | None = None,
        ab_key: str | None = None,
    ) -> dict[str, Any]:
        try:
            validate_id(group, "group")
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if mode not in MODES:
            raise InputError(f"rollout mode {mode!r}: use one of {', '.join(MODES)}")
        if mode == "ab" and (ab_fraction is None or not 0 <= ab_fraction <= 1):
            raise InputError("an A/B rollout needs ab_fraction between 0 and 1 (the challenger's share of keys)")
        if mode != "ab" and (ab_fraction is not None or ab_key):
            raise InputError("ab_fraction and ab_key are for an A/B rollout (mode ab)")
        with self._lock:
            info = self.registry.get(name, version)
            active = self._rows(group=group, states=ACTIVE)
            if active:
                raise InputError(
                    f"rollout {active[0]['id']} is still in progress in group {group}: promote or roll it back first"
                )
            members = [d["device_id"] for d in device_list(self.store, group)]
            chosen = parse_canary(canary, members)
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
            if mode in _BESIDE:
                what = "a shadow canary" if mode == "shadow" else "an A/B rollout"
                if previous is None:
                    raise InputError(f"{what} needs a champion: group {group} runs no version of {name}")
                if not chosen:
                    raise InputError(f"{what} needs canary devices (--canary 0 leaves none)")
                champion = self.registry.get(name, previous)
            now = time.time()
            rollout_id = f"r-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
            row = {
                "id": rollout_id,
                "group_name": group,
                "model_name": name,
                "model_version": version,
                "previous_version": previous,
                "canary": chosen,
                "soak_s": float(soak_s),
                "state": "canary",
                "reason": None,
                "actor": actor,
                "created_at": now,
                "mode": mode,
            }
            if champion is not None and mode == "ab":
                split = (info, float(ab_fraction or 0.0), ab_key or None)
                desired = self._desired(champion, rollout_id, ab=split).model_dump_json()
            elif champion is not None:
                desired = self._desired(champion, rollout_id, shadow=info).model_dump_json()
            else:
                desired = self._desired(info, rollout_id).model_dump_json()
            overrides.publish(self.store, self.publisher, group, chosen, desired, rollout_id)
            with self.store.begin() as conn:
                conn.execute(rollouts.insert().values(**row))
                why = f"canary {', '.join(chosen)} then group, soak {soak_s:g}s" if chosen else "no canary"
                if mode == "shadow":
                    why = (
                        f"shadow canary: {', '.join(chosen)} keep {name}/{previous} serving with {name}/{version} "
                        f"in shadow; promoted after a soak of {soak_s:g}s if its accuracy is at least the champion's"
                    )
                if mode == "ab":
                    key = f"record field {ab_key}, else the X-Request-Key header" if ab_key else "X-Request-Key header"
                    why = (
                        f"A/B: {name}/{version} answers {ab_fraction:g} of the request keys ({key}) beside "
                        f"{name}/{previous} on {', '.join(chosen)}; promotion is manual"
                    )
                audit.record(
                    conn,
                    actor,
                    "deploy",
                    f"{name}/{version} -> group {group}",
                    why,
                    {"rollout_id": rollout_id, "previous_version": previous, "canary": chosen, "mode": mode}
                    | ({"ab_fraction": ab_fraction, "ab_key": ab_key} if mode == "ab" else {}),
                )
            log_event(
                logger,
                "rollout started",
                rollout=rollout_id,
                model=f"{name}/{version}",
                group=group,
                canary=",".join(chosen) or "-",
                mode=mode,
            )
            if not chosen:
                return self.promote(rollout_id, actor, "no canary devices: published to the whole group")
            return self.status(rollout_id)

    def promote(
        self, rollout_id: str, actor: str = "operator", reason: str | None = None, details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        with self._lock:
            row = self._get(rollout_id)
            if row["state"] not in ACTIVE:
                raise InputError(f"rollout {rollout_id} is {row['state']}; only an active rollout can be promoted")
            info = self.registry.get(row["model_name"], row["model_version"])
            self.publisher.publish(group_desired(row["group_name"]), self._desired(info, rollout_id).model_dump_json())
            self._clear_overrides(row["group_name"], row["canary"])
            reason = reason or "promoted by hand before the soak ended"
            self._finish(row, "promoted", reason, actor, "promote", details)
            return self.status(rollout_id)

    def rollback(
        self, rollout_id: str, actor: str = "operator", reason: str | None = None, details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        with self._lock:
            row = self._get(rollout_id)
            if row["state"] not in (*ACTIVE, "promoted"):
                raise InputError(f"rollout {rollout_id} is {row['state']}; there is nothing to roll back")
            reason = reason or "rolled back by hand"
            name, previous = row["model_name"], row["previous_version"]
            promoted = row["state"] == "promoted"
            if row["mode"] in _BESIDE and not promoted:
                # The canary served the champion all along: the same version without a shadow stops it.
                desired = self._desired(self.registry.get(name, previous), rollout_id).model_dump_json()
                overrides.publish(self.store, self.publisher, row["group_name"], row["canary"], desired, rollout_id)
                self._finish(row, "rolled_back", reason, actor, "rollback", details)
                return self.status(rollout_id)
            if previous is None:
                self._clear_overrides(row["group_name"], row["canary"])
                note = f"{reason} (no previous version known: canary overrides cleared, devices keep what they run)"
                self._finish(row, "rolled_back", note, actor, "rollback")
                return self.status(rollout_id)
            try:
                desired = self._rollback_desired(self.registry.get(name, previous), rollout_id).model_dump_json()
            except EdgeloopError as exc:
                self._finish(row, "failed", f"{reason}; rollback impossible: {exc.message}", actor, "rollback failed")
                raise
            if promoted:
                self.publisher.publish(group_desired(row["group_name"]), desired)
                self._clear_overrides(row["group_name"], [])
            else:
                overrides.publish(self.store, self.publisher, row["group_name"], row["canary"], desired, rollout_id)
            self._finish(row, "rolled_back", reason, actor, "rollback", details)
            return self.status(rollout_id)

    # -- controller ---------------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """Advance every active rollout once (the controller thread calls this every rollout_tick_s)."""
        for row in self._rows(states=ACTIVE):
            try:
                self._advance(row, time.time() if now is None else now)
            except EdgeloopError as exc:
                log_event(
                    logger, "rollout step failed, retrying", level=logging.WARNING, rollout=row["id"], error=exc.message
                )

    def run(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        while not stop.wait(interval_s):
            try:
                self.tick()
            except Exception:
                logger.exception("rollout controller tick failed")

    def _advance(self, row: dict[str, Any], now: float) -> None:
        name, version, group, canary = row["model_name"], row["model_version"], row["group_name"], row["canary"]
        since = row["created_at"]
        with self._lock:
            current = self._get(row["id"])
            if current["state"] not in ACTIVE:
                return
            failure = check_canary(
                self.store,
                self.registry,
                group,
                canary,
                name,
                version,
                row["previous_version"],
                since,
                now,
                self.limits,
            )
            if failure:
                self.rollback(row["id"], "controller", failure)
                return
            if current["mode"] == "shadow":
                advance_shadow(self, current, now)
            elif current["mode"] == "ab":
                advance_ab(self, current, now)
            else:
                advance_serving(self, current, now)

    # -- queries ------------------------------------------------------------------------------------
    def recent(self, group: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return [rollout_status.public(row) for row in self._rows(group=group, limit=limit)]

    def latest(self, group: str | None = None) -> dict[str, Any]:
        rows = self._rows(group=group, limit=1)
        if not rows:
            raise NotFoundError("no rollout yet" + (f" in group {group}" if group else ""))
        return self.status(rows[0]["id"])

    def status(self, rollout_id: str, per_device: bool = True) -> dict[str, Any]:
        """The rollout and each device of its group; `per_device=False`: only the counts `group_devices` and
        `on_target`, by one aggregate query (for polling a group of thousands)."""
        return rollout_status.report(self.store, self._get(rollout_id), per_device, self.ab_last.get(rollout_id))

    # -- helpers ------------------------------------------------------------------------------------
    def _desired(
        self,
        info: BundleInfo,
        rollout_id: str,
        shadow: BundleInfo | None = None,
        ab: tuple[BundleInfo, float, str | None] | None = None,
    ) -> DesiredState:
        return desired_state(self.base_url, info, rollout_id, shadow, ab)

    def _rollback_desired(self, info: BundleInfo, rollout_id: str) -> DesiredState:
        return rollback_state(self.base_url, self.keys_dir, info, rollout_id)

    def _clear_overrides(self, group: str, extra: list[str]) -> None:
        """Empty retained payloads on the device-level desired topics that hold one (recorded when published),
        so each device follows its group; one batch, not a round trip per device."""
        cleared = overrides.clear(self.store, self.publisher, group, extra)
        log_event(logger, "device overrides cleared", group=group, devices=cleared)

    def _previous_version(self, group: str, name: str) -> int | None:
        """What the group runs: the last promoted rollout of `name`, else the version most of its devices report."""
        for row in self._rows(group=group, states=("promoted",)):
            if row["model_name"] == name:
                return int(row["model_version"])
        for row in self._rows(group=group, states=("rolled_back",)):
            if row["model_name"] == name and row["previous_version"] is not None:
                return int(row["previous_version"])
        versions = Counter(
            d["model_version"]
            for d in device_list(self.store, group)
            if d["model_name"] == name and d["model_version"] is not None
        )
        return versions.most_common(1)[0][0] if versions else None

    def _finish(
        self,
        row: dict[str, Any],
        state: str,
        reason: str,
        actor: str,
        action: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        now = time.time()
        with self.store.begin() as conn:
            conn.execute(
                rollouts.update().where(rollouts.c.id == row["id"]).values(state=state, reason=reason, finished_at=now)
            )
            audit.record(
                conn,
                actor,
                action,
                f"{row['model_name']}/{row['model_version']} in group {row['group_name']}",
                reason,
                {
                    "rollout_id": row["id"],
                    "previous_version": row["previous_version"],
                    "canary": row["canary"],
                    **(details or {}),
                },
                now,
            )
        level = logging.WARNING if state != "promoted" else logging.INFO
        log_event(logger, f"rollout {state}", level=level, rollout=row["id"], reason=reason, actor=actor)

    def _get(self, rollout_id: str) -> dict[str, Any]:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(rollouts).where(rollouts.c.id == rollout_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"rollout {rollout_id} not found; `edgeloop rollout status` lists them")
        return dict(row)

    def _rows(
        self, group: str | None = None, states: tuple[str, ...] | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        query = sa.select(rollouts).order_by(rollouts.c.created_at.desc())
        if group:
            query = query.where(rollouts.c.group_name == group)
        if states:
            query = query.where(rollouts.c.state.in_(states))
        if limit:
            query = query.limit(limit)
        with self.store.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

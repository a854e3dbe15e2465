"""Staged rollouts: canary devices first, a soak watched through what they report, then the whole group,
or an automatic rollback that says why.

    deploy   -> retained DesiredState (signed manifest + model_url) on each canary device's topic
    canary   -> every canary device reports the version (else rollback after rollout_confirm_timeout_s)
    soaking  -> rollout_checks.check_canary every tick; a failure rolls back at once
    promoted -> retained DesiredState on the group topic, then the device-level overrides of the group are
                cleared (empty retained payload) so every device follows the group again
    rolled_back -> the previous version's manifest, re-signed with rollback=true (devices refuse an older
                version otherwise), on the canary topics (or the group topic after a promotion)

Mode `shadow` (a shadow canary): the canary devices get the champion (the group's version) with the
challenger in shadow (`DesiredState.shadow`); during the soak the controller compares the challenger's shadow
accuracy with the champion's on the same feedback (`rollout_checks.shadow_comparison`, at least
`min_samples` labels). After the soak: at least as good -> promoted (the challenger becomes the served
version of the group); worse -> rolled back (the canary gets the champion without a shadow); not enough
labels within the soak plus rollout_confirm_timeout_s -> rolled back.

Mode `ab` (an A/B test): the canary devices get the champion with the challenger as an A/B split
(`DesiredState.ab`: the challenger answers `ab_fraction` of the request keys, by a stable hash of the key,
`ab_key` names the record field that is the key, else the `X-Request-Key` header). Every tick the controller
merges the canary's per-arm counts (`rollout_checks.ab_arms`) and rolls back when `check_ab` fails: the
challenger's error rate or p99 above the limits, or its accuracy more than `max_accuracy_drop` below the
champion arm's (at least `min_samples` requests / labels on each arm). `status` shows requests, failures,
records and accuracy per arm (computed afresh for the detailed status; `per_device=False` polling gets the
last tick's). Promotion stays manual: the rollout soaks until an operator promotes (the challenger serves the
group) or rolls back (the canary gets the champion without the split); a canary that rejects the challenger
still rolls back at once.

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

from cloud_sync import audit, overrides
from cloud_sync.bundles import BundleInfo, BundleRegistry
from cloud_sync.fleet import device_list
from cloud_sync.publisher import MqttPublisher
from cloud_sync.rollout_checks import (
    Limits,
    ab_arms,
    ab_comparison,
    ab_report,
    check_ab,
    check_canary,
    shadow_comparison,
)
from cloud_sync.store import Store, devices, rollouts
from contracts.errors import ConflictError, EdgeloopError, InputError, NotFoundError
from contracts.logs import log_event
from contracts.manifest import canonical_bytes
from contracts.messages import ABSplit, DesiredState, ShadowBundle
from contracts.signing import PRIVATE_KEY_FILE, load_private_key, sign_bytes
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
        self._ab_last: dict[str, dict[str, Any]] = {}
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
                self._advance_shadow(current, now)
                return
            if current["mode"] == "ab":
                if current["state"] == "canary":  # the canary keeps serving the champion: soaking at once
                    with self.store.begin() as conn:
                        soaking = rollouts.update().where(rollouts.c.id == row["id"])
                        conn.execute(soaking.values(state="soaking", soak_started_at=now))
                self._guard_ab(current, now)
                return  # promotion of an A/B challenger is the operator's decision
            if current["state"] == "canary":
                reported = self._reported(canary)
                waiting = [
                    d
                    for d in canary
                    if (reported.get(d, {}).get("model_name"), reported.get(d, {}).get("model_version"))
                    != (name, version)
                ]
                if not waiting:
                    with self.store.begin() as conn:
                        conn.execute(
                            rollouts.update()
                            .where(rollouts.c.id == row["id"])
                            .values(state="soaking", soak_started_at=now)
                        )
                    log_event(logger, "canary on the new version, soaking", rollout=row["id"], soak_s=row["soak_s"])
                elif now - since > self.confirm_timeout_s:
                    self.rollback(
                        row["id"],
                        "controller",
                        f"canary devices {', '.join(waiting)} did not report "
                        f"{name}/{version} within {self.confirm_timeout_s:g}s",
                    )
                return
            if now - (current["soak_started_at"] or since) >= row["soak_s"]:
                self.promote(row["id"], "controller", f"soak of {row['soak_s']:g}s passed on {', '.join(canary)}")

    def _guard_ab(self, row: dict[str, Any], now: float) -> None:
        """A/B: compare the challenger's arm with the champion's on the canary; roll back when check_ab fails."""
        name, version, previous = row["model_name"], row["model_version"], row["previous_version"]
        if previous is None:
            return
        arms = ab_arms(self.store, row["group_name"], row["canary"], name, previous, version, row["created_at"], now)
        report = ab_report(arms, previous, version)
        self._ab_last[row["id"]] = report
        failure = check_ab(arms, name, previous, version, self.limits)
        if failure:
            self.rollback(row["id"], "controller", failure, {"mode": "ab", "ab": report})

    def _advance_shadow(self, row: dict[str, Any], now: float) -> None:
        """Shadow canary: soaking from the start (the canary keeps serving the champion); after the soak the
        challenger's measured shadow accuracy decides."""
        name, version, previous, canary = (
            row["model_name"],
            row["model_version"],
            row["previous_version"],
            row["canary"],
        )
        if row["state"] == "canary":
            with self.store.begin() as conn:
                conn.execute(
                    rollouts.update().where(rollouts.c.id == row["id"]).values(state="soaking", soak_started_at=now)
                )
            log_event(logger, "shadow canary soaking", rollout=row["id"], soak_s=row["soak_s"])
            return
        started = row["soak_started_at"] or row["created_at"]
        if now - started < row["soak_s"]:
            return
        result = shadow_comparison(self.store, row["group_name"], canary, name, previous, version, started, now)
        details = {"mode": "shadow", **result.as_details(), "min_labels": self.limits.min_samples}
        enough = min(result.labels, result.challenger_labels) >= self.limits.min_samples
        if enough and result.champion_accuracy is not None and result.challenger_accuracy is not None:
            measured = (
                f"{name}/{version} in shadow: accuracy {result.challenger_accuracy:.3f} on "
                f"{result.challenger_labels} labels, champion {name}/{previous}: {result.champion_accuracy:.3f} "
                f"on {result.labels} (canary {', '.join(canary)})"
            )
            if result.challenger_accuracy >= result.champion_accuracy:
                self.promote(row["id"], "controller", f"{measured}: at least as good, promoted", details)
            else:
                self.rollback(row["id"], "controller", f"{measured}: worse, shadow stopped", details)
            return
        if now - started >= row["soak_s"] + self.confirm_timeout_s:
            self.rollback(
                row["id"],
                "controller",
                f"not enough feedback to compare {name}/{version} with {name}/{previous}: "
                f"{min(result.labels, result.challenger_labels)} labels, {self.limits.min_samples} needed",
                details,
            )

    # -- queries ------------------------------------------------------------------------------------
    def recent(self, group: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return [self._public(row) for row in self._rows(group=group, limit=limit)]

    def latest(self, group: str | None = None) -> dict[str, Any]:
        rows = self._rows(group=group, limit=1)
        if not rows:
            raise NotFoundError("no rollout yet" + (f" in group {group}" if group else ""))
        return self.status(rows[0]["id"])

    def status(self, rollout_id: str, per_device: bool = True) -> dict[str, Any]:
        """The rollout and each device of its group; `per_device=False`: only the counts `group_devices` and
        `on_target`, by one aggregate query (for polling a group of thousands)."""
        row = self._get(rollout_id)
        result = self._public(row)
        if not per_device:
            if rollout_id in self._ab_last:  # the last tick's per-arm report: polling reads no windows
                result["ab"] = self._ab_last[rollout_id]
            result["group_devices"], result["on_target"] = self._on_target(row)
            return result
        if result["mode"] == "ab" and row["previous_version"] is not None:
            end = row["finished_at"] or time.time()
            result["ab"] = ab_comparison(
                self.store, row["group_name"], row["canary"], row["model_name"], row["previous_version"],
                row["model_version"], row["created_at"], end,
            )  # fmt: skip
        members = device_list(self.store, row["group_name"])
        target = (row["model_name"], row["model_version"])
        result["devices"] = [
            {
                "device_id": d["device_id"],
                "canary": d["device_id"] in row["canary"],
                "online": d["online"],
                "model_version": d["model_version"],
                "on_target": (d["model_name"], d["model_version"]) == target,
                "state": d["state"],
                "last_error": d["last_error"],
            }
            for d in members
        ]
        result["on_target"] = sum(1 for d in result["devices"] if d["on_target"])
        return result

    # -- helpers ------------------------------------------------------------------------------------
    def _desired(
        self,
        info: BundleInfo,
        rollout_id: str,
        shadow: BundleInfo | None = None,
        ab: tuple[BundleInfo, float, str | None] | None = None,
    ) -> DesiredState:
        return DesiredState(
            manifest=info.manifest.model_dump(mode="json"),
            signature=info.signature,
            model_url=self._model_url(info),
            rollout_id=rollout_id,
            issued_at=audit.iso(time.time()) or "",
            shadow=None
            if shadow is None
            else ShadowBundle(
                manifest=shadow.manifest.model_dump(mode="json"),
                signature=shadow.signature,
                model_url=self._model_url(shadow),
            ),
            ab=None
            if ab is None
            else ABSplit(
                manifest=ab[0].manifest.model_dump(mode="json"),
                signature=ab[0].signature,
                model_url=self._model_url(ab[0]),
                fraction=ab[1],
                key_field=ab[2],
            ),
        )

    def _model_url(self, info: BundleInfo) -> str:
        return f"{self.base_url}/bundles/{info.name}/{info.version}/model.onnx"

    def _rollback_desired(self, info: BundleInfo, rollout_id: str) -> DesiredState:
        """The previous manifest with rollback=true, re-signed: devices refuse an older version otherwise."""
        key = load_private_key(self.keys_dir / PRIVATE_KEY_FILE)
        manifest = info.manifest.model_copy(update={"rollback": True})
        desired = self._desired(info, rollout_id)
        desired.manifest = manifest.model_dump(mode="json")
        desired.signature = sign_bytes(canonical_bytes(manifest), key).decode()
        return desired

    def _clear_overrides(self, group: str, extra: list[str]) -> None:
        """Empty retained payloads on the device-level desired topics that hold one (recorded when published),
        so each device follows its group; one batch, not a round trip per device."""
        cleared = overrides.clear(self.store, self.publisher, group, extra)
        log_event(logger, "device overrides cleared", group=group, devices=cleared)

    def _on_target(self, row: dict[str, Any]) -> tuple[int, int]:
        """(devices in the group, how many of them report the rollout's version): one query."""
        c = devices.c
        hit = sa.case(((c.model_name == row["model_name"]) & (c.model_version == row["model_version"]), 1), else_=0)
        query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(hit), 0)).where(
            c.group_name == row["group_name"]
        )
        with self.store.engine.connect() as conn:
            total, on_target = conn.execute(query).one()
        return int(total), int(on_target)

    def _reported(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """The model each of `names` reports (one query over those devices, not the whole group)."""
        query = sa.select(devices.c.device_id, devices.c.model_name, devices.c.model_version)
        with self.store.engine.connect() as conn:
            rows = conn.execute(query.where(devices.c.device_id.in_(names))).mappings().all() if names else []
        return {row["device_id"]: dict(row) for row in rows}

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

    @staticmethod
    def _public(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": row["id"],
            "group": row["group_name"],
            "model": f"{row['model_name']}/{row['model_version']}",
            "model_name": row["model_name"],
            "model_version": row["model_version"],
            "previous_version": row["previous_version"],
            "canary": row["canary"],
            "soak_s": row["soak_s"],
            "state": row["state"],
            "reason": row["reason"],
            "actor": row["actor"],
            "created_at": audit.iso(row["created_at"]),
            "soak_started_at": audit.iso(row["soak_started_at"]),
            "finished_at": audit.iso(row["finished_at"]),
            "mode": row.get("mode") or "serving",
        }

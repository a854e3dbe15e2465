"""`edgeloop rollout status --wait`: poll one rollout until it ends, reporting each change of its state (or stage) or of
how many devices run its version, and turn its end into an exit code a CI job can act on.

    promoted     -> returns (exit 0)
    rolled_back  -> RolloutRolledBack  (exit 10)
    failed       -> RolloutFailed      (exit 11)
    --timeout    -> RolloutWaitTimeout (exit 12): still canary or soaking (or the cloud unreachable throughout)

A cloud that cannot be reached for a moment (a restart, a proxy hiccup) is reported and polled again until the
timeout: a deploy job should not fail because one poll did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from contracts.errors import RolloutFailed, RolloutRolledBack, RolloutWaitTimeout, ServiceUnavailableError

__all__ = ["RolloutSnapshot", "wait_for_rollout"]

ACTIVE = ("canary", "soaking")


@dataclass(frozen=True)
class RolloutSnapshot:
    """What one poll of `GET /v1/rollouts/{id}?devices=false` says about the rollout."""

    id: str
    model: str
    group: str
    state: str
    reason: str | None
    on_target: int
    group_devices: int
    stage: str | None = None
    """A staged rollout's `2/4`."""

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> RolloutSnapshot:
        devices = body.get("group_devices", len(body.get("devices", [])))
        return cls(
            id=str(body["id"]),
            model=str(body["model"]),
            group=str(body["group"]),
            state=str(body["state"]),
            reason=body.get("reason"),
            on_target=int(body.get("on_target", 0)),
            group_devices=int(devices),
            stage=f"{body['stage']['stage']}/{body['stage']['of']}" if body.get("stage") else None,
        )

    def line(self, elapsed_s: float) -> str:
        """One progress line, e.g. `[  12s] soaking: 1/4 devices on machine-failure/2`."""
        stage = f" (stage {self.stage})" if self.stage else ""
        return f"[{elapsed_s:5.0f}s] {self.state}{stage}: {self.on_target}/{self.group_devices} devices on {self.model}"


def wait_for_rollout(
    fetch: Callable[[], Mapping[str, Any]],
    *,
    timeout_s: float,
    interval_s: float,
    report: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutSnapshot:
    """Poll `fetch` every `interval_s` until the rollout is promoted (returned) or ends otherwise (raised);
    `report` gets one line per change of state, stage or device count, and one per unreachable spell of the cloud."""
    started = clock()
    last: RolloutSnapshot | None = None
    shown: tuple[str, int, int, str | None] | None = None
    unreachable: str | None = None
    while True:
        try:
            last = RolloutSnapshot.from_api(fetch())
            unreachable = None
        except ServiceUnavailableError as exc:
            if unreachable is None:
                report(f"[{clock() - started:5.0f}s] {exc.message}; polling again")
            unreachable = exc.message
        elapsed = clock() - started
        if last is not None and unreachable is None:
            key = (last.state, last.on_target, last.group_devices, last.stage)
            if key != shown:
                report(last.line(elapsed))
                shown = key
            if last.state == "promoted":
                return last
            if last.state == "rolled_back":
                raise RolloutRolledBack(
                    f"rollout {last.id} ({last.model} -> group {last.group}) was rolled back: "
                    f"{last.reason or 'no reason given'}; the group runs its previous version"
                )
            if last.state not in ACTIVE:
                raise RolloutFailed(
                    f"rollout {last.id} ({last.model} -> group {last.group}) {last.state}: "
                    f"{last.reason or 'no reason given'}; see `edgeloop rollout status {last.id}` and the audit log"
                )
        if elapsed >= timeout_s:
            where = f"rollout {last.id} is still {last.state}" if last is not None else "no answer from the cloud"
            cause = f" (last error: {unreachable})" if unreachable else ""
            raise RolloutWaitTimeout(
                f"{where} after {timeout_s:g}s{cause}; wait longer with --timeout, or decide with "
                "`edgeloop rollout promote` / `edgeloop rollout rollback`"
            )
        sleep(min(interval_s, max(timeout_s - elapsed, 0.0)))

"""How fast a staged rollout switches devices and when it gives up: AWS IoT Jobs' shape, so operators
recognise it.

- Rate: `max_per_minute` N spaces the switches 60/N seconds apart. `next_batch` takes the devices whose slot
  has come (slot k of a run is `next_switch_at + k * 60/N`), so a tick publishes what came due since the last
  one: over any minute at most N devices, give or take one tick's batch. Time spent confirming or soaking
  earns no burst: widening moves `next_switch_at` to at least the moment it widens.
- Progress: each switched device (the rollout's `canary`, with the time its device-level desired state was
  published, from `desired_overrides`) is confirmed (reports the version), rejected (a `rejected` event for
  it), late (neither, `confirm_timeout_s` after its switch) or still waiting.
- Abort rule (`abort_failed_pct` X, `abort_min_devices` M): once at least M devices were switched, more than
  X % of them rejected or late -> roll back, with that reason. Without the rule a staged rollout is as strict
  as a canary: the first rejection (`checks.check_canary`) or late device rolls it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cloud_sync.rollouts import overrides
from cloud_sync.rollouts.checks import rejections
from cloud_sync.rollouts.model import Pacing, Rollout
from cloud_sync.rollouts.modes.base import reported
from cloud_sync.store.db import Store

__all__ = ["Progress", "abort_reason", "next_batch", "progress"]


@dataclass(frozen=True)
class Progress:
    """What the devices switched so far did with the rollout's version."""

    switched: int
    confirmed: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]
    """(device, the reason it gave)."""
    late: tuple[str, ...]
    """Neither confirmed nor rejected `confirm_timeout_s` after their switch."""
    waiting: tuple[str, ...]
    timeout_s: float

    @property
    def failed(self) -> list[str]:
        return [device for device, _ in self.rejected] + list(self.late)


def progress(store: Store, rollout: Rollout, *, now: float, timeout_s: float) -> Progress:
    """Sort the rollout's switched devices by what they did (module doc); a few queries over those devices."""
    switched = rollout.canary
    on = reported(store, switched)
    refused: dict[str, str] = {}
    for device, reason in rejections(store, rollout):
        refused.setdefault(device, reason)
    published = overrides.published(store, rollout.id)
    target = (rollout.model_name, rollout.model_version)
    confirmed, late, waiting = [], [], []
    for device in switched:
        if on.get(device) == target:
            confirmed.append(device)
        elif device in refused:
            continue
        elif now - published.get(device, rollout.created_at) > timeout_s:
            late.append(device)
        else:
            waiting.append(device)
    return Progress(
        switched=len(switched),
        confirmed=tuple(confirmed),
        rejected=tuple(refused.items()),
        late=tuple(late),
        waiting=tuple(waiting),
        timeout_s=timeout_s,
    )


def abort_reason(pacing: Pacing | None, seen: Progress) -> str | None:
    """The abort rule's reason to roll back (module doc), or None."""
    if pacing is None or pacing.abort_failed_pct is None or seen.switched < pacing.abort_min_devices:
        return None
    failed = sorted(seen.failed)
    share = 100 * len(failed) / seen.switched
    if share <= pacing.abort_failed_pct:
        return None
    shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
    return (
        f"abort rule: {len(failed)} of {seen.switched} switched devices ({share:.0f}%) rejected the version or did "
        f"not confirm it within {seen.timeout_s:g}s, above {pacing.abort_failed_pct:g}% "
        f"(counted from {pacing.abort_min_devices} devices): {shown}"
    )


def next_batch(
    pending: tuple[str, ...], pacing: Pacing | None, next_switch_at: float | None, now: float
) -> tuple[tuple[str, ...], float | None]:
    """The devices of `pending` to switch at `now` and the next slot: all of them without a rate limit."""
    if pacing is None or pacing.max_per_minute is None:
        return pending, None
    gap = 60.0 / pacing.max_per_minute
    start = now if next_switch_at is None else next_switch_at
    if now < start or not pending:
        return (), start
    count = min(len(pending), 1 + math.floor((now - start) / gap))
    return pending[:count], start + count * gap

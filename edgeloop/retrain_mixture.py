"""Retraining data that represents the fleet: one device's feedback rows may not rewrite the reference for all.

The original rows stand for the whole fleet; feedback rows come from the devices that sent labels, often one
drifting device. Mixed in as they are, that device's rows set the new model's reference profile (the training
rows' distribution every device's drift is judged against): in the demo, gw-3's new firmware at 35 % of
1,000 feedback rows became 6 % of v2's reference, and gw-1 and gw-2, which never had it, drifted against it.

`fleet_sample` keeps, per device, at most `max_device_share` x the original rows (a seeded random sample of
that device's rows when it sent more; rows without a device, e.g. a file with no `device_id` column, are
one source and are not capped: they cannot be told apart). At the default 4 %, a category only one device
has stays under 4 % of the reference, and its absence from the other devices stays under the PSI minimum
effect of 0.25 (0.04 x ln(0.04 / 1e-4) = 0.24). The `Mixture` says what was kept (the model card states it).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DEVICE_COLUMN", "Mixture", "MixturePart", "fleet_sample"]

DEVICE_COLUMN = "device_id"
"""The feedback rows' column naming the device that sent them (dropped before training)."""
_NO_DEVICE = "(no device)"


@dataclass(frozen=True)
class MixturePart:
    source: str
    """`original`, a device id, or `(no device)` for feedback rows that name none."""
    received: int
    kept: int
    share: float
    """Kept rows over all training rows."""


@dataclass
class Mixture:
    max_device_share: float | None
    cap_rows: int | None
    """Feedback rows kept per device at most (max_device_share x original rows)."""
    parts: list[MixturePart] = field(default_factory=list)

    @property
    def feedback_kept(self) -> int:
        return sum(part.kept for part in self.parts if part.source != "original")

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Mixture:
        raw = json.loads(text)
        return cls(raw["max_device_share"], raw["cap_rows"], [MixturePart(**part) for part in raw["parts"]])

    def describe(self) -> str:
        """One line for the model card and the job's output."""
        parts = []
        for part in self.parts:
            if part.source == "original":
                parts.append(f"{part.kept} original rows ({part.share:.1%})")
            else:
                parts.append(f"{part.source} {part.kept} of {part.received} feedback rows ({part.share:.1%})")
        cap = (
            f"; at most {self.cap_rows} rows per device ({self.max_device_share:.0%} of the original rows)"
            if self.cap_rows is not None
            else "; no cap per device"
        )
        return ", ".join(parts) + cap


def fleet_sample(
    feedback: Any, original_rows: int, max_device_share: float | None, seed: int = 0
) -> tuple[Any, Mixture]:
    """Cap each device's rows at `max_device_share` x `original_rows` (seeded sample, order kept); returns the
    kept rows and the mixture. `feedback` is a pandas DataFrame."""
    cap = None if max_device_share is None else max(0, math.floor(max_device_share * original_rows))
    devices = feedback[DEVICE_COLUMN].fillna(_NO_DEVICE).astype(str) if DEVICE_COLUMN in feedback else None
    kept_frames, counts = [], []
    if devices is None:
        kept_frames.append(feedback)
        counts.append((_NO_DEVICE, len(feedback), len(feedback)))
    else:
        for device, rows in feedback.groupby(devices, sort=True):
            if cap is not None and device != _NO_DEVICE and len(rows) > cap:
                rows = rows.sample(n=cap, random_state=seed).sort_index()
            kept_frames.append(rows)
            counts.append((str(device), int((devices == device).sum()), len(rows)))
    import pandas as pd

    kept = pd.concat(kept_frames).sort_index() if kept_frames else feedback
    total = original_rows + len(kept)
    parts = [MixturePart("original", original_rows, original_rows, original_rows / total if total else 0.0)]
    parts += [MixturePart(source, received, n, n / total) for source, received, n in counts if received]
    return kept, Mixture(max_device_share, cap, parts)

"""A deterministic sample data set that tells the product's story: predictive maintenance on a gateway.

Each row is one machine reading collected by an industrial gateway: temperature, vibration, pressure,
rpm, power draw, hours since the last service, the machine type, its firmware and site (categories),
with some readings missing as real sensors drop out. The target `failure_24h` says whether the machine
failed within the next 24 hours. `drift=True` produces the same machines after a summer heat wave and a
worn bearing batch: hotter, more vibration, a new firmware nobody trained on.

    python -m trainer.sample_data --out data/machines.csv --rows 6000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["FEATURES", "TARGET", "make_machines", "write_machines"]

TARGET = "failure_24h"
FEATURES = [
    "temperature_c",
    "vibration_mm_s",
    "pressure_bar",
    "rpm",
    "power_kw",
    "hours_since_service",
    "machine_type",
    "firmware",
    "site",
]
MACHINE_TYPES = ["press", "pump", "compressor", "conveyor"]
FIRMWARES = ["v1.2", "v1.3", "v2.0"]
SITES = ["lyon", "turin", "graz"]


def make_machines(rows: int = 6000, seed: int = 7, drift: bool = False) -> pd.DataFrame:
    """Generate `rows` readings; the same arguments always give the same frame."""
    rng = np.random.default_rng(seed + (1000 if drift else 0))
    machine_type = rng.choice(MACHINE_TYPES, size=rows, p=[0.3, 0.3, 0.25, 0.15])
    firmware = rng.choice(FIRMWARES, size=rows, p=[0.2, 0.5, 0.3]).astype(object)
    site = rng.choice(SITES, size=rows)
    base_temp = {"press": 62.0, "pump": 55.0, "compressor": 70.0, "conveyor": 45.0}
    temperature = np.array([base_temp[t] for t in machine_type]) + rng.normal(0, 6, rows)
    vibration = rng.gamma(2.0, 1.6, rows)
    pressure = rng.normal(6.0, 0.9, rows)
    rpm = rng.normal(1500, 220, rows)
    hours = rng.exponential(400, rows)
    if drift:
        temperature += 9.0
        vibration *= 1.6
        firmware[rng.random(rows) < 0.35] = "v2.1-beta"
    power = 0.004 * rpm + 0.05 * pressure + rng.normal(0, 0.6, rows)
    logit = (
        -6.0
        + 0.075 * (temperature - 55)
        + 0.55 * vibration
        + 0.0022 * hours
        + 0.6 * (firmware == "v1.2")
        + 0.5 * (machine_type == "compressor")
        - 0.25 * np.abs(pressure - 6.0)
    )
    failure = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame(
        {
            "reading_id": np.arange(1, rows + 1),
            "temperature_c": temperature.round(2),
            "vibration_mm_s": vibration.round(3),
            "pressure_bar": pressure.round(3),
            "rpm": rpm.round(0),
            "power_kw": power.round(3),
            "hours_since_service": hours.round(1),
            "machine_type": machine_type,
            "firmware": firmware,
            "site": site,
            TARGET: failure,
        }
    )
    # Sensors drop out: about 3 % of temperature and vibration readings and 2 % of firmware tags are missing.
    for column, rate in (("temperature_c", 0.03), ("vibration_mm_s", 0.03), ("firmware", 0.02)):
        frame.loc[rng.random(rows) < rate, column] = None
    return frame


def write_machines(path: Path, rows: int = 6000, seed: int = 7, drift: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = make_machines(rows, seed, drift)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".parquet":
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/machines.csv"))
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drift", action="store_true", help="generate drifted readings")
    args = parser.parse_args()
    write_machines(args.out, args.rows, args.seed, args.drift)


if __name__ == "__main__":
    main()

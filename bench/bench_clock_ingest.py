"""What honest clocks cost the ingest writer: `IngestWriter.write` in batches of 500 windows from 1,000 devices,
without send times (the baseline: agents before `sent_at_ms`, nothing measured or corrected) against the same
windows stamped with a send time a week behind (each batch measures every device's offset, shifts every
window's times and writes the devices' clock columns), in rounds whose order alternates, in one run, on SQLite and
PostgreSQL (when reachable).

    .venv/bin/python bench/bench_clock_ingest.py
    .venv/bin/python bench/bench_clock_ingest.py --windows 20000 --rounds 3

Not a test: numbers depend on the machine and its load (shared machine: compare the ratio, same run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_ingest import render, stores, template
from cloud_sync.ingest.writer import Incoming, IngestWriter
from cloud_sync.store.db import Store

WEEK = 7 * 86400.0


def batches(prefix: str, windows: int, skewed: bool) -> list[list[Incoming]]:
    """`windows` windows of 1,000 devices (device clocks a week slow when `skewed`), in batches of 500."""
    base, now = template(), time.time()
    shift = WEEK if skewed else 0.0
    items = [
        Incoming(
            f"edgeloop/v1/devices/{prefix}-{i % 1000:04d}/telemetry",
            render(base, f"{prefix}-{i % 1000:04d}", i // 1000 + 1, now - shift),
            now,
            sent_at=now - shift if skewed else None,
        )
        for i in range(windows)
    ]
    return [items[start : start + 500] for start in range(0, windows, 500)]


def rate(store: Store, work: list[list[Incoming]]) -> float:
    writer = IngestWriter(store)
    started = time.perf_counter()
    for batch in work:
        result = writer.write(batch)
        assert result.windows == len(batch), result  # every window stored (none a duplicate)
    return sum(len(batch) for batch in work) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=10_000, help="windows per round and kind")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each kind (the order alternates)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine, store in stores(Path(tmp)):
            if isinstance(store, str):
                rows.append((engine, store, "", ""))
                continue
            plain, skewed = [], []
            for round_ in range(args.rounds):  # the order alternates: the table grows, later runs pay for it
                for kind in (False, True) if round_ % 2 == 0 else (True, False):
                    measured = rate(store, batches(f"{'s' if kind else 'p'}{round_}", args.windows, skewed=kind))
                    (skewed if kind else plain).append(measured)
            base, clock = statistics.median(plain), statistics.median(skewed)
            rows.append((engine, f"{base:,.0f}", f"{clock:,.0f}", f"{clock / base:.2f}x"))
            if engine == "postgresql":
                store.drop_all()
            store.dispose()
    header = ("store", "no send times win/s (baseline)", "a week slow, corrected win/s", "ratio")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print(f"ingest writer, honest clocks: {args.windows:,} windows x {args.rounds} rounds each, batches of 500, "
          f"1,000 devices, median of rounds, {os.cpu_count()} CPUs")  # fmt: skip
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()

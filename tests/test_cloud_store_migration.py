"""A cloud store made before outbox epochs is migrated in place on start: every row kept (epoch 0), keyed on
(device, epoch, seq) afterwards, on SQLite (table copied) and PostgreSQL (constraint replaced); its device table
gains the unacknowledged-message, label and clock columns, its rows kept; its rollouts table the selector."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.schema import CreateTable

from cloud_sync.store.db import Store, devices, events, gaps, metadata, rollouts, windows
from tests.cloud_support import postgres_url

_WINDOW = {
    "device_id": "dev-1", "group_name": "g", "window_start": 1.0, "window_end": 2.0, "received_at": 2.0,
    "requests": 5, "errors": 0, "payload": "{}",
}  # fmt: skip
_LATER = ("unacknowledged", "labels", "clock_", "selector")  # columns added to devices and rollouts since
_EVENT = {"device_id": "dev-1", "kind": "started", "details": "{}", "at": "2026-01-01T00:00:00Z", "received_at": 2.0}


def _pre_epoch_ddl(table: sa.Table, engine: sa.Engine, schema: str | None) -> str:
    """The table as the release before epochs created it: no epoch column, unique on (device_id, seq)."""
    ddl = str(CreateTable(table).compile(engine))
    ddl = "\n".join(line for line in ddl.splitlines() if "epoch" not in line or "UNIQUE" in line)
    ddl = ddl.replace(f"uq_{table.name}_device_epoch_seq UNIQUE (device_id, epoch, seq)",
                      f"uq_{table.name}_device_seq UNIQUE (device_id, seq)")  # fmt: skip
    return ddl.replace(f"CREATE TABLE {table.name}", f"CREATE TABLE {schema}.{table.name}") if schema else ddl


def _make_pre_epoch_store(url: str, schema: str | None) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if schema:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        for table in metadata.sorted_tables:
            if table is gaps:
                continue
            if table in (windows, events):
                conn.exec_driver_sql(_pre_epoch_ddl(table, engine, schema))
            elif table in (devices, rollouts):  # before the unacknowledged, label, clock and selector columns
                ddl = str(CreateTable(table).compile(engine))
                ddl = "\n".join(line for line in ddl.splitlines() if not any(word in line for word in _LATER))
                name = f"CREATE TABLE {table.name}"
                conn.exec_driver_sql(ddl.replace(name, f"CREATE TABLE {schema}.{table.name}") if schema
                                     else ddl)  # fmt: skip
            else:
                table.to_metadata(sa.MetaData(), schema=schema).create(conn)
        prefix = f"{schema}." if schema else ""
        conn.exec_driver_sql(
            f"CREATE TABLE {prefix}gaps (id INTEGER PRIMARY KEY, device_id VARCHAR(64) NOT NULL, stream VARCHAR(16) "
            "NOT NULL, first_missing BIGINT NOT NULL, last_missing BIGINT NOT NULL, filled BIGINT NOT NULL, "
            "detected_at FLOAT NOT NULL)"
        )
        for seq in (1, 2):
            conn.execute(sa.text(f"INSERT INTO {prefix}windows (device_id, seq, group_name, window_start, window_end, "
                                 "received_at, requests, errors, payload) VALUES (:device_id, :seq, :group_name, "
                                 ":window_start, :window_end, :received_at, :requests, :errors, :payload)"),
                         {**_WINDOW, "seq": seq})  # fmt: skip
        conn.execute(sa.text(f"INSERT INTO {prefix}events (device_id, seq, kind, details, at, received_at) VALUES "
                             "(:device_id, 1, :kind, :details, :at, :received_at)"), _EVENT)  # fmt: skip
        conn.execute(sa.text(f"INSERT INTO {prefix}devices (device_id, group_name, first_seen, last_seen) VALUES "
                             "('dev-1', 'g', 1.0, 2.0)"))  # fmt: skip
    engine.dispose()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_pre_epoch_store_keeps_its_rows_and_accepts_a_new_epoch(engine: str, tmp_path: Path) -> None:
    if engine == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'cloud.db'}", None
    else:
        url, schema = postgres_url(), f"edgeloop_mig_{uuid.uuid4().hex[:10]}"
    _make_pre_epoch_store(url, schema)
    store = Store(url, schema=schema).create()
    try:
        Store(url, schema=schema).create().dispose()  # a second start changes nothing
        with store.begin() as conn:
            kept = conn.execute(sa.select(windows.c.epoch, windows.c.seq).order_by(windows.c.seq)).all()
            assert [tuple(row) for row in kept] == [(0, 1), (0, 2)]
            assert conn.execute(sa.select(events.c.epoch, events.c.seq)).all() == [(0, 1)]
            assert "epoch" in {column["name"] for column in sa.inspect(conn).get_columns("gaps", schema=schema)}
            device = conn.execute(sa.select(devices)).mappings().one()
            assert device["last_seen"] == 2.0 and device["unacknowledged"] is None
            conn.execute(devices.update().values(unacknowledged=4, unacknowledged_oldest_s=1.5, unacknowledged_at=3.0))
            assert conn.execute(sa.select(devices.c.unacknowledged_oldest_s)).scalar() == 1.5
            conn.execute(devices.update().values(labels={"site": "graz"}, clock_offset_s=604800.0, clock_offset_at=3.0))
            assert conn.execute(sa.select(devices.c.labels, devices.c.clock_offset_s)).one() == (
                {"site": "graz"},
                604800.0,
            )
            assert "selector" in {column["name"] for column in sa.inspect(conn).get_columns("rollouts", schema=schema)}
            # The same seq under a new epoch is a new row; the same (epoch, seq) is still refused.
            rows = [{**_WINDOW, "seq": 1, "epoch": 1_700_000_000_000}, {**_WINDOW, "seq": 2, "epoch": 0}]
            conn.execute(store.insert_ignore(windows, ["device_id", "epoch", "seq"]), rows)
            assert conn.execute(sa.select(sa.func.count()).select_from(windows)).scalar() == 3
    finally:
        if engine == "postgresql":
            store.drop_all()
        store.dispose()


def test_a_migration_that_fails_half_way_leaves_the_old_store_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's DDL is made transactional (BEGIN IMMEDIATE): a failure after the table was renamed and copied
    rolls everything back, and the next start migrates from the intact old table."""
    import cloud_sync.store.legacy as store_module
    from contracts.errors import EdgeloopError

    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    _make_pre_epoch_store(url, None)

    def fail_after_the_copy(_logger: object, event: str, **_fields: object) -> None:
        raise RuntimeError(f"killed after: {event}")

    monkeypatch.setattr(store_module, "log_event", fail_after_the_copy)
    with pytest.raises((RuntimeError, EdgeloopError), match="killed after"):
        Store(url).create()
    monkeypatch.undo()
    check = sa.create_engine(url)
    with check.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        assert "windows_before_epoch" not in tables
        assert "epoch" not in {c["name"] for c in sa.inspect(conn).get_columns("windows")}
        assert conn.exec_driver_sql("SELECT count(*) FROM windows").scalar() == 2
    check.dispose()
    store = Store(url).create()
    try:
        with store.begin() as conn:
            assert sorted(conn.execute(sa.select(windows.c.epoch, windows.c.seq)).all()) == [(0, 1), (0, 2)]
    finally:
        store.dispose()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_two_clouds_starting_together_on_an_old_store_both_start(engine: str, tmp_path: Path) -> None:
    """Several ingest workers or a restart overlapping the old process: create() is serialised (SQLite
    BEGIN IMMEDIATE, a PostgreSQL advisory lock), so the second sees the migration done instead of failing."""
    import threading

    if engine == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'cloud.db'}", None
    else:
        url, schema = postgres_url(), f"edgeloop_mig_{uuid.uuid4().hex[:10]}"
    _make_pre_epoch_store(url, schema)
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def start() -> None:
        barrier.wait()
        try:
            Store(url, schema=schema).create().dispose()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    store = Store(url, schema=schema)
    try:
        assert errors == []
        with store.begin() as conn:
            assert sorted(conn.execute(sa.select(windows.c.epoch, windows.c.seq)).all()) == [(0, 1), (0, 2)]
    finally:
        if engine == "postgresql":
            store.drop_all()
        store.dispose()


def test_a_first_start_makes_the_sqlite_store_directory(tmp_path: Path) -> None:
    """`edgeloop cloud` before anything else: $EDGELOOP_HOME does not exist yet (it answered 'unable to open')."""
    path = tmp_path / "not-yet" / "home" / "cloud.db"
    store = Store(f"sqlite:///{path}").create()
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(windows)).scalar_one() == 0
    assert path.is_file()

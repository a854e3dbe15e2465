"""Alembic migrations of the cloud store (cloud_sync/store/migrations), on SQLite and on a PostgreSQL database of
the test's own: a new store migrated to the newest revision has exactly the tables of cloud_sync/store/db.py;
a store made by the code of commit 731b31b (before Alembic, tests/store_731b31b.py) keeps its rows and is
upgraded to the same schema; `edgeloop cloud migrate` says what it did, prints the SQL, and refuses a store
of a newer edgeloop in one line."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from cloud_sync.store import migrate
from cloud_sync.store.db import Store, alerts, audit_log, devices, metadata, rollouts, watermarks, windows
from contracts.errors import ConflictError
from tests import store_731b31b as old
from tests.cli_helpers import run_edgeloop
from tests.cloud_support import postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store: a SQLite file, or a PostgreSQL database made for the test and dropped after it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.db'}"
        return
    server = sa.create_engine(postgres_url(), isolation_level="AUTOCOMMIT")
    name = f"edgeloop_alembic_{uuid.uuid4().hex[:10]}"
    with server.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield str(sa.make_url(postgres_url()).set(database=name).render_as_string(hide_password=False))
    finally:
        with server.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.dispose()


def schema_differences(url: str, target: sa.MetaData = metadata) -> list[Any]:
    """What Alembic's autogenerate finds between the store at `url` and `target` (tables, columns, types,
    indexes, unique constraints); [] when they agree."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), target))
    finally:
        engine.dispose()


def make_731b31b_store(url: str) -> None:
    """The store as `edgeloop cloud` of commit 731b31b left it, with a few rows of each kind."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        old.OLD.create_all(conn)
        if engine.dialect.name == "sqlite":
            for statement in old.SQLITE_APPEND_ONLY:
                conn.exec_driver_sql(statement)
        tables = old.OLD.tables
        conn.execute(tables["devices"].insert().values(device_id="gw-1", group_name="g", first_seen=1.0, last_seen=2.0,
                                                       model_name="m", model_version=1))  # fmt: skip
        conn.execute(tables["windows"].insert().values(device_id="gw-1", epoch=5, seq=1, group_name="g",
                                                       window_start=1.0, window_end=2.0, received_at=2.0, requests=10,
                                                       errors=0, payload="{}"))  # fmt: skip
        conn.execute(tables["rollouts"].insert().values(id="r-1", group_name="g", model_name="m", model_version=1,
                                                        canary=["gw-1"], soak_s=0.0, state="promoted", actor="ops",
                                                        created_at=1.0, mode="serving"))  # fmt: skip
        conn.execute(tables["alerts"].insert().values(rule="feature-drift", subject="gw-1/rpm", state="firing",
                                                      severity="warning", value=0.4, message="PSI",
                                                      fired_at=2.0))  # fmt: skip
        conn.execute(tables["audit_log"].insert().values(at=1.0, actor="ops", action="deploy", target="r-1",
                                                         details={}))  # fmt: skip
    engine.dispose()


def test_a_new_store_has_exactly_the_tables_of_db_py(store_url: str) -> None:
    store = Store(store_url).create()
    try:
        assert store.revision_before is None
        with store.engine.connect() as conn:
            assert migrate.revision_of(conn) == migrate.HEAD
    finally:
        store.dispose()
    assert schema_differences(store_url) == []


def test_the_comparison_sees_a_column_added_to_db_py_without_a_revision(tmp_path: Path) -> None:
    """What the test above guards against: db.py gains a column and no revision adds it."""
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    Store(url).create().dispose()
    grown = sa.MetaData()
    for table in metadata.sorted_tables:
        copy = table.to_metadata(grown)
        if table.name == "devices":
            copy.append_column(sa.Column("firmware_channel", sa.String(32)))
    assert [diff[0] for diff in schema_differences(url, grown)] == ["add_column"]


def test_a_store_of_commit_731b31b_keeps_its_rows_and_is_upgraded(store_url: str) -> None:
    make_731b31b_store(store_url)
    store = Store(store_url).create()
    try:
        assert store.revision_before is None  # made before Alembic: no alembic_version
        with store.begin() as conn:
            assert migrate.revision_of(conn) == migrate.HEAD
            assert conn.execute(sa.select(devices.c.device_id, devices.c.labels, devices.c.clock_offset_s)).all() == [
                ("gw-1", None, None)
            ]
            assert conn.execute(sa.select(windows.c.epoch, windows.c.seq, windows.c.requests)).all() == [(5, 1, 10)]
            assert conn.execute(sa.select(rollouts.c.id, rollouts.c.canary, rollouts.c.selector)).all() == [
                ("r-1", ["gw-1"], None)
            ]
            assert conn.execute(sa.select(alerts.c.rule, alerts.c.value, alerts.c.p_value)).all() == [
                ("feature-drift", 0.4, None)
            ]
            # the columns and the table the upgrade added take values
            conn.execute(devices.update().values(labels={"hw": "pi4"}, clock_offset_s=0.5, unacknowledged=3))
            conn.execute(rollouts.update().values(stages=[0.1, 1.0], stage=0, selector="hw=pi4"))
            conn.execute(
                watermarks.insert().values(device_id="gw-1", stream="telemetry", epoch=5, seq=1, top=1, updated_at=2.0)
            )
            assert conn.execute(sa.select(devices.c.labels)).scalar_one() == {"hw": "pi4"}
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.begin() as conn:
            conn.execute(audit_log.delete())
    finally:
        store.dispose()
    assert schema_differences(store_url) == []
    again = Store(store_url).create()  # the next start finds the newest revision and changes nothing
    assert again.revision_before == migrate.HEAD
    again.dispose()


def test_a_store_of_a_newer_edgeloop_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    Store(url).create().dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'r9999'")
    engine.dispose()
    with pytest.raises(ConflictError, match=r"revision r9999, which this edgeloop does not know .* upgrade edgeloop"):
        Store(url).create()


def test_edgeloop_cloud_migrate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    make_731b31b_store(url)
    home = tmp_path / "home"
    first = run_edgeloop(["cloud", "migrate", "--store-url", url], monkeypatch, capsys, home)
    assert first.exit_code == 0, first.stderr
    assert f"migrated: revision none -> {migrate.HEAD}" in " ".join(first.stdout.split())
    second = run_edgeloop(["cloud", "migrate", "--store-url", url], monkeypatch, capsys, home)
    assert f"is at the newest revision {migrate.HEAD}: nothing to do" in " ".join(second.stdout.split())
    sql = run_edgeloop(["cloud", "migrate", "--sql", "--store-url", "postgresql://db/edgeloop"], monkeypatch, capsys,
                       home)  # fmt: skip
    assert sql.exit_code == 0 and "CREATE TABLE devices" in sql.stdout and "CREATE TABLE watermarks" in sql.stdout
    assert f"INSERT INTO alembic_version (version_num) VALUES ('{migrate.HEAD}')" in sql.stdout
    bad = run_edgeloop(["cloud", "migrate", "--sql", "--from", "nope"], monkeypatch, capsys, home)
    assert bad.exit_code == 2
    assert bad.errors == [f"error: --from 'nope': not a revision of this edgeloop ({migrate.HEAD})"]

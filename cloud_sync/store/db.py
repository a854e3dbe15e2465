"""The cloud's store: SQLAlchemy 2 Core tables on SQLite (default) or PostgreSQL.

Times are UTC epoch seconds (float) everywhere: portable, index-friendly, rendered as ISO by the API.
Telemetry windows keep their raw JSON payload (the counts are merged at query time, never averaged) and
are unique on (device_id, epoch, seq), like events (epoch: when the device's outbox was created): a
redelivered message inserts nothing. `audit_log` is append-only, enforced by a trigger on both engines.
The schema is migrated by Alembic (cloud_sync/store/migrations): a change of a table here comes with a
revision there (docs/DEVELOPING.md, "Add a column to the cloud store").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from contracts.errors import InputError, ServiceUnavailableError
from contracts.logs import log_event

__all__ = [
    "Store",
    "alerts",
    "audit_log",
    "dead_letters",
    "desired_overrides",
    "devices",
    "drift_baselines",
    "events",
    "feedback_rows",
    "gaps",
    "metadata",
    "rollouts",
    "watermarks",
    "windows",
]

logger = logging.getLogger("edgeloop.cloud.store")
metadata = sa.MetaData()

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("group_name", sa.String(64)),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("online", sa.Boolean),
    sa.Column("status_at", sa.Float),
    sa.Column("model_name", sa.String(200)),
    sa.Column("model_version", sa.Integer),
    sa.Column("bundle_sha256", sa.String(64)),
    sa.Column("state", sa.String(16)),
    sa.Column("last_error", sa.Text),
    sa.Column("agent_version", sa.String(64)),
    sa.Column("reported_at", sa.Float),
    sa.Column("unacknowledged", sa.Integer),  # from the device's latest telemetry window (end-to-end ack)
    sa.Column("unacknowledged_oldest_s", sa.Float),
    sa.Column("unacknowledged_at", sa.Float),  # that window's end: a resent older window never overwrites it
    sa.Column("labels", sa.JSON),  # from the reported state (agent setting `labels`); null = none reported
    sa.Column("clock_offset_s", sa.Float),  # cloud time minus device time, measured at ingest (ingest/clocks.py)
    sa.Column("clock_offset_at", sa.Float),  # when that was measured (the cloud's receive time)
)

windows = sa.Table(
    "windows",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("group_name", sa.String(64), nullable=False),
    sa.Column("model_name", sa.String(200)),
    sa.Column("model_version", sa.Integer),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("window_end", sa.Float, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.UniqueConstraint("device_id", "epoch", "seq", name="uq_windows_device_epoch_seq"),
    sa.Index("ix_windows_end", "window_end"),
    sa.Index("ix_windows_group_end", "group_name", "window_end"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("model_name", sa.String(200)),
    sa.Column("model_version", sa.Integer),
    sa.Column("reason", sa.Text),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.UniqueConstraint("device_id", "epoch", "seq", name="uq_events_device_epoch_seq"),
    sa.Index("ix_events_received", "received_at"),
)

gaps = sa.Table(
    "gaps",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("stream", sa.String(16), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("first_missing", sa.BigInteger, nullable=False),
    sa.Column("last_missing", sa.BigInteger, nullable=False),
    sa.Column("filled", sa.BigInteger, nullable=False, default=0),
    sa.Column("detected_at", sa.Float, nullable=False),
)

watermarks = sa.Table(  # end-to-end acknowledgement: per device, stream and outbox epoch (docs/mqtt.md)
    "watermarks",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("stream", sa.String(16), primary_key=True),
    sa.Column("epoch", sa.BigInteger, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),  # 1..seq are all stored
    sa.Column("top", sa.BigInteger, nullable=False),  # the highest seq stored
    sa.Column("updated_at", sa.Float, nullable=False),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)

rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("group_name", sa.String(64), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("previous_version", sa.Integer),
    sa.Column("canary", sa.JSON, nullable=False),
    sa.Column("soak_s", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # canary -> soaking -> promoted | rolled_back | failed
    sa.Column("reason", sa.Text),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("soak_started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("mode", sa.String(16), nullable=False, server_default="serving"),  # serving | shadow
    sa.Column("selector", sa.Text),  # label selector (rollouts/selectors.py); null = the whole group
    sa.Column("stages", sa.JSON),  # staged rollouts (rollouts/stages.py): cumulative % of the group per stage
    sa.Column("stage", sa.Integer),  # the stage in progress
    sa.Column("stage_devices", sa.JSON),  # the devices each stage adds
    sa.Column("pacing", sa.JSON),  # model.Pacing: rate limit and abort rule
    sa.Column("next_switch_at", sa.Float),  # rate limit: earliest time of the next device switch
    sa.Index("ix_rollouts_group", "group_name", "created_at"),
)

desired_overrides = sa.Table(  # device-level desired topics holding a retained payload (cleared on promotion)
    "desired_overrides",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("group_name", sa.String(64), nullable=False),
    sa.Column("rollout_id", sa.String(32)),
    sa.Column("published_at", sa.Float, nullable=False),
    sa.Index("ix_desired_overrides_group", "group_name"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("details", sa.JSON, nullable=False),
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule", sa.String(100), nullable=False),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("p_value", sa.Float),  # drift alerts: adjusted p-value of the merged counts
    sa.Column("records", sa.Integer),  # drift alerts: records the decision rests on
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("fired_at", sa.Float, nullable=False),
    sa.Column("resolved_at", sa.Float),
    sa.Column("acknowledged_by", sa.String(100)),
    sa.Column("acknowledged_at", sa.Float),
    sa.Column("resolution", sa.Text),  # why it resolved when not by its breach ending (an accepted drift)
    sa.Index("ix_alerts_rule_subject", "rule", "subject", "state"),
)

drift_baselines = (
    sa.Table(  # a device's accepted drift: its own windows after a validated promotion (loop/baselines.py)
        "drift_baselines",
        metadata,
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("model_name", sa.String(200), primary_key=True),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("rollout_id", sa.String(32)),
        sa.Column("accepted_at", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("ready_at", sa.Float),  # end of the baseline's last window; NULL while it is forming
        sa.Column("records", sa.Integer, nullable=False, server_default="0"),
        sa.Column("counts", sa.Text),  # the baseline windows' merged WindowCounts (JSON)
    )
)

feedback_rows = sa.Table(
    "feedback_rows",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("prediction_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("group_name", sa.String(64), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("made_at", sa.Float, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("predicted", sa.Text),
    sa.Column("actual", sa.Text, nullable=False),
    sa.Column("features", sa.JSON, nullable=False),
    sa.UniqueConstraint("device_id", "prediction_id", name="uq_feedback_rows_device_prediction"),
    sa.Index("ix_feedback_rows_model_received", "model_name", "received_at"),
)

_SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
]
_PG_APPEND_ONLY = [
    "CREATE OR REPLACE FUNCTION {s}edgeloop_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$",
    "DROP TRIGGER IF EXISTS audit_log_append_only ON {s}audit_log",
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON {s}audit_log "
    "FOR EACH ROW EXECUTE FUNCTION {s}edgeloop_append_only()",
]


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _make_parent_dir(database: str | None) -> None:
    """A SQLite file's directory is made on the first start (`$EDGELOOP_HOME` may not exist before `edgeloop cloud`)."""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


class Store:
    """An engine plus the tables; `Store(url).create()` makes the tables if they are missing."""

    def __init__(self, url: str, schema: str | None = None, echo: bool = False) -> None:
        if not url.startswith(("sqlite", "postgresql")):
            raise InputError(f"store URL {url!r}: use sqlite:///path/to/cloud.db or postgresql+psycopg://...")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        self.url = url
        self.schema = schema
        kwargs: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads, "echo": echo}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        if schema:
            engine = engine.execution_options(schema_translate_map={None: schema})
        self.engine: Engine = engine
        self.dialect = engine.dialect.name
        self.revision_before: str | None = None  # the schema revision create() found (None: empty or pre-Alembic)

    def create(self) -> Store:
        """Migrate the store to the newest Alembic revision (cloud_sync/store/migrate.py; an empty store gets
        every table), in one transaction that concurrent starts of the cloud wait on (SQLite: BEGIN IMMEDIATE,
        so even the DDL is atomic; PostgreSQL: an advisory lock): with several replicas one migrates, the
        others then find the store at the newest revision. The audit log's append-only triggers are
        asserted on every start."""
        if self.dialect == "sqlite":
            _make_parent_dir(self.engine.url.database)
        try:
            with self.engine.connect() as conn:
                if self.dialect == "sqlite":
                    with _sqlite_immediate(conn):
                        self._create_in(conn)
                else:
                    with conn.begin():
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_SCHEMA_LOCK})
                        self._create_in(conn)
        except sa.exc.OperationalError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise ServiceUnavailableError(f"store {self.safe_url} is unreachable: {first}") from None
        return self

    def _create_in(self, conn: Connection) -> None:
        from cloud_sync.store import migrate

        if self.schema and self.dialect == "postgresql":
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
        before, head = migrate.upgrade(conn, self.schema if self.dialect == "postgresql" else None)
        self.revision_before = before
        if before != head:
            log_event(logger, "store migrated", store=self.safe_url, revision=f"{before or 'none'} -> {head}")
        if self.dialect == "sqlite":
            for statement in _SQLITE_APPEND_ONLY:
                conn.exec_driver_sql(statement)
        else:
            prefix = f'"{self.schema}".' if self.schema else ""
            for statement in _PG_APPEND_ONLY:
                conn.exec_driver_sql(statement.format(s=prefix))

    @property
    def safe_url(self) -> str:
        return sa.make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def insert_ignore(self, table: sa.Table, keys: Sequence[str]) -> Any:
        """An INSERT that does nothing for a row whose `keys` already exist (both engines)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table).on_conflict_do_nothing(index_elements=list(keys))
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(keys))

    def upsert(self, table: sa.Table, key: str, update: Sequence[str]) -> Any:
        """INSERT ... ON CONFLICT (key) DO UPDATE SET each column in `update` to the new value."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt: Any = pg_insert(table)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table)
        return stmt.on_conflict_do_update(index_elements=[key], set_={name: stmt.excluded[name] for name in update})

    def drop_all(self) -> None:
        """Remove every table (tests and `bench/`); the schema too when one was given on PostgreSQL."""
        with self.engine.begin() as conn:
            if self.schema and self.dialect == "postgresql":
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            else:
                metadata.drop_all(conn)

    def dispose(self) -> None:
        self.engine.dispose()


_PG_SCHEMA_LOCK = 0x6564676C6F6F70  # "edgeloop": serialises Store.create() across processes


@contextmanager
def _sqlite_immediate(conn: Connection) -> Iterator[None]:
    """One real transaction on SQLite, DDL included: Python's sqlite3 module commits before each DDL
    statement in its default mode, so a migration killed half-way would leave a table renamed and its rows
    behind. In autocommit mode with an explicit BEGIN IMMEDIATE (which also makes a second starting process
    wait) everything commits or nothing does."""
    dbapi = conn.connection.driver_connection
    saved = dbapi.isolation_level  # type: ignore[union-attr]
    dbapi.isolation_level = None  # type: ignore[union-attr]
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if dbapi.in_transaction:  # type: ignore[union-attr]
                dbapi.rollback()  # type: ignore[union-attr]
            raise
        dbapi.commit()  # type: ignore[union-attr]
    finally:
        dbapi.isolation_level = saved  # type: ignore[union-attr]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()

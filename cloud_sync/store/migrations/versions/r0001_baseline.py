"""Baseline: the cloud store's schema when Alembic took over (the tables of cloud_sync/store/db.py on main then).

On an empty store it creates every table. On a store made before Alembic (tables, no `alembic_version`) it
creates the tables that store lacks and brings the others up to this schema as the hand-written start-up checks
did (cloud_sync/store/legacy.py: later columns, re-keying on outbox epochs, past canaries as overrides). The
tables are a frozen copy: later changes of db.py are later revisions, never edits of this file.

Revision ID: r0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.schema import CreateIndex, CreateTable

from cloud_sync.store.legacy import bring_to_baseline

revision = "r0001"
down_revision = None
branch_labels = None
depends_on = None

BASELINE = sa.MetaData()

devices = sa.Table(
    "devices",
    BASELINE,
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
    BASELINE,
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
    BASELINE,
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
    BASELINE,
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
    BASELINE,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("stream", sa.String(16), primary_key=True),
    sa.Column("epoch", sa.BigInteger, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),  # 1..seq are all stored
    sa.Column("top", sa.BigInteger, nullable=False),  # the highest seq stored
    sa.Column("updated_at", sa.Float, nullable=False),
)

dead_letters = sa.Table(
    "dead_letters",
    BASELINE,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)

rollouts = sa.Table(
    "rollouts",
    BASELINE,
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
    BASELINE,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("group_name", sa.String(64), nullable=False),
    sa.Column("rollout_id", sa.String(32)),
    sa.Column("published_at", sa.Float, nullable=False),
    sa.Index("ix_desired_overrides_group", "group_name"),
)

audit_log = sa.Table(
    "audit_log",
    BASELINE,
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
    BASELINE,
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
        BASELINE,
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
    BASELINE,
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


def upgrade() -> None:
    schema = context.config.attributes.get("schema")
    if context.is_offline_mode():
        missing = list(BASELINE.sorted_tables)
    else:
        inspector = sa.inspect(op.get_bind())
        missing = [table for table in BASELINE.sorted_tables if not inspector.has_table(table.name, schema=schema)]
    for table in missing:
        op.execute(CreateTable(table))
        for index in sorted(table.indexes, key=lambda index: str(index.name)):
            op.execute(CreateIndex(index))
    if not context.is_offline_mode() and len(missing) < len(BASELINE.tables):  # a store made before Alembic
        bring_to_baseline(op.get_bind(), schema, dict(BASELINE.tables), {table.name for table in missing})


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: restore a backup of the store instead")

"""The cloud store's tables as the code of commit 731b31b (cloud_sync/store.py, before Alembic) created them:
a frozen copy for tests/test_cloud_store_alembic.py, which makes such a store and upgrades it. Later changes
(alert p-values, device acknowledgement/labels/clock columns, rollout selectors and stages) are what the
upgrade must add."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["OLD", "SQLITE_APPEND_ONLY"]

OLD = sa.MetaData()

devices = sa.Table(
    "devices",
    OLD,
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
)

windows = sa.Table(
    "windows",
    OLD,
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
    OLD,
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
    OLD,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("stream", sa.String(16), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("first_missing", sa.BigInteger, nullable=False),
    sa.Column("last_missing", sa.BigInteger, nullable=False),
    sa.Column("filled", sa.BigInteger, nullable=False, default=0),
    sa.Column("detected_at", sa.Float, nullable=False),
)

dead_letters = sa.Table(
    "dead_letters",
    OLD,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)

rollouts = sa.Table(
    "rollouts",
    OLD,
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
    sa.Index("ix_rollouts_group", "group_name", "created_at"),
)

desired_overrides = sa.Table(  # device-level desired topics holding a retained payload (cleared on promotion)
    "desired_overrides",
    OLD,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("group_name", sa.String(64), nullable=False),
    sa.Column("rollout_id", sa.String(32)),
    sa.Column("published_at", sa.Float, nullable=False),
    sa.Index("ix_desired_overrides_group", "group_name"),
)

audit_log = sa.Table(
    "audit_log",
    OLD,
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
    OLD,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule", sa.String(100), nullable=False),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("fired_at", sa.Float, nullable=False),
    sa.Column("resolved_at", sa.Float),
    sa.Column("acknowledged_by", sa.String(100)),
    sa.Column("acknowledged_at", sa.Float),
    sa.Index("ix_alerts_rule_subject", "rule", "subject", "state"),
)

feedback_rows = sa.Table(
    "feedback_rows",
    OLD,
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

SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
]

"""Cloud settings (env prefix EDGELOOP_CLOUD_, config file table [cloud]); `edgeloop cloud` flags on top.

EDGELOOP_CLOUD_MQTT_URL=mqtt://broker:1883 EDGELOOP_CLOUD_OPERATOR_TOKENS='["s3cret"]' edgeloop cloud
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from contracts.settings import EdgeloopSettings, edgeloop_home

__all__ = ["CloudSettings"]


class CloudSettings(EdgeloopSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_CLOUD_", extra="ignore", use_attribute_docstrings=True)
    config_section: ClassVar[str] = "cloud"

    host: str = "127.0.0.1"
    """Address the API and bundle server listen on; 0.0.0.0 to accept devices on other machines."""
    port: int = Field(default=8700, ge=1, le=65535)
    """Port of the API and bundle server."""
    public_url: str | None = None
    """Base URL devices download bundles from (goes into `model_url`); default http://HOST:PORT."""
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    """Broker, mqtt://HOST:PORT or mqtts://HOST:PORT."""
    mqtt_username: str | None = None
    """Broker user name."""
    mqtt_password: str | None = None
    """Broker password."""
    mqtt_ca_file: Path | None = None
    """CA certificate that signed the broker's (mqtts://), e.g. certs/ca.pem from deploy/mosquitto/make-certs.sh;
    default: the system's CAs."""
    ingest_client_id: str = "edgeloop-cloud-ingest-1"
    """MQTT client id of this ingest worker; give each worker its own (they share the load through the
    shared subscription and each keeps a persistent session, so a restart loses nothing)."""
    ingest_share_group: str | None = None
    """MQTT 5 shared subscription group for several ingest workers splitting the load (e.g. edgeloop-ingest).
    Unset = one worker on a plain persistent subscription, the lossless choice on Mosquitto 2.0, which does
    not restore shared subscriptions after a broker restart."""
    ingest_batch: int = Field(default=500, ge=1)
    """Most messages written in one database transaction (they are acknowledged after the commit)."""
    ack_enabled: bool = True
    """End-to-end acknowledgement: after each commit, tell every device that sent something its watermarks
    (retained on edgeloop/v1/devices/ID/ack); devices keep what is not covered and send it again. Off = as a
    cloud from before it (devices then delete on the broker's PUBACK)."""
    ack_interval_s: float = Field(default=1.0, gt=0)
    """At most one acknowledgement per device per this many seconds (batched, never one per window)."""
    store_url: str = Field(default_factory=lambda: f"sqlite:///{edgeloop_home() / 'cloud.db'}")
    """SQLAlchemy URL of the store: sqlite:///path (default $EDGELOOP_HOME/cloud.db) or
    postgresql+psycopg://user@host/db."""
    store_schema: str | None = None
    """PostgreSQL schema holding the tables (default: the connection's search path)."""
    bundles_dir: Path = Field(default_factory=lambda: edgeloop_home() / "bundles")
    """Where the bundle server keeps the signed bundles it serves ($EDGELOOP_HOME/bundles)."""
    keys_dir: Path = Field(default_factory=lambda: edgeloop_home() / "keys")
    """Signing key pair: the public key checks uploaded bundles; the private key re-signs a previous
    manifest with rollback=true when a rollout is rolled back."""
    viewer_tokens: list[str] = Field(default_factory=list)
    """Bearer tokens allowed to read (devices, fleet stats, rollouts, alerts, audit)."""
    operator_tokens: list[str] = Field(default_factory=list)
    """Bearer tokens allowed to read and to act (upload bundles, deploy, promote, roll back, acknowledge).
    With no token configured at all the API is open to anyone who can reach it (a warning is logged)."""
    max_body_bytes: int = Field(default=256 * 2**20, ge=1024)
    """Largest REST request body in bytes (a bundle upload is the largest): over it -> 413, unread."""
    online_timeout_s: float = Field(default=120.0, gt=0)
    """A device that sent nothing for this long is shown offline even without its last will."""
    clock_skew_limit_s: float = Field(default=300.0, gt=0)
    """A device whose clock is off by more than this (measured from the send times of its messages) fires the
    `clock-skew` alert (a rule of kind clock_skew_above without a threshold uses this)."""
    clock_tolerance_s: float = Field(default=2.0, ge=0)
    """Clock offsets smaller than this are taken as delivery delay: window times are stored as the device sent
    them; larger ones are corrected to the cloud's clock (docs/cloud.md "Honest clocks")."""
    rollout_tick_s: float = Field(default=1.0, gt=0)
    """How often the rollout controller checks active rollouts (and, on PostgreSQL, how often every replica
    tries for the leadership and the leader checks it still holds it)."""
    leader_stale_ticks: int = Field(default=5, ge=3)
    """PostgreSQL replicas: a leader whose lock connection has been idle this many `rollout_tick_s` (frozen:
    SIGSTOP, swap) has that connection terminated by another replica, which takes over; the leader's own
    loops act only within half of it after its last check (docs/cloud.md "One leader")."""
    rollout_confirm_timeout_s: float = Field(default=300.0, gt=0)
    """Canary devices must report the new version within this time, else the rollout is rolled back (a staged
    rollout: each device from its own switch; `--confirm-timeout` overrides it per rollout)."""
    rollout_max_error_rate: float = Field(default=0.05, ge=0)
    """Roll back when the canary's prediction errors / requests exceed this during the soak."""
    rollout_max_p99_s: float = Field(default=0.25, gt=0)
    """Roll back when the canary's p99 latency (merged histograms) exceeds this many seconds."""
    rollout_max_psi: float = Field(default=0.25, gt=0)
    """Roll back when any feature's PSI on the canary (merged counts) exceeds this and the chi-square test of
    those counts says drifted (drift_alpha, docs/loop.md)."""
    rollout_max_accuracy_drop: float = Field(default=0.05, ge=0)
    """Roll back when the canary's accuracy is lower than the previous version's (rest of the group, same
    period) by more than this."""
    rollout_min_samples: int = Field(default=50, ge=1)
    """Fewest requests (error rate, latency), records (drift) or feedback labels (accuracy) before a
    soak check is trusted."""
    ab_auto_decide: bool = False
    """A/B rollouts: act on the sequential test's verdict (docs/loop.md "A/B decision"): roll back when the
    challenger is worse, promote when it is better and the soak has passed. Off: the verdict is shown
    (`rollout status`, API, dashboard) and the operator decides."""
    ab_alpha: float = Field(default=0.05, gt=0, lt=1)
    """A/B test: largest chance of a "better" or "worse" verdict between equally accurate arms, however often
    the test is read (the verdict's confidence must reach 1 - ab_alpha)."""
    ab_min_labels: int = Field(default=100, ge=1)
    """A/B test: feedback labels each arm needs before the test may give a verdict."""
    ab_mixture_sd: float = Field(default=0.05, gt=0, lt=1)
    """A/B test: the accuracy difference it is tuned to find fastest (sd of the mSPRT's mixing prior)."""
    alert_rules: Path | None = None
    """YAML file of alert rules (docs/cloud.md); default: the built-in rules."""
    alert_tick_s: float = Field(default=30.0, gt=0)
    """How often alert rules are evaluated."""
    drift_alpha: float = Field(default=0.01, gt=0, lt=1)
    """Drift alerts (psi_above rules) fire only when the chi-square p-value of the merged counts, adjusted across
    the features (drift_correction), is below this, besides the rule's PSI threshold (the minimum effect)."""
    drift_min_expected: float = Field(default=5.0, ge=0)
    """Bins and categories expected to hold fewer records than this are pooled before the drift test."""
    drift_correction: Literal["holm", "bh"] = "holm"
    """Multiple-testing control across features: `holm` (family-wise error) or `bh` (false discovery rate)."""
    drift_baseline_records: int = Field(default=500, ge=1)
    """Records a device's baseline takes after a validated promotion accepted its drift: its first windows on the
    promoted version until they hold this many; later windows are judged against them (docs/loop.md)."""
    webhook_url: str | None = None
    """Optional URL every alert firing and resolution is POSTed to (JSON)."""
    score_bundles: dict[str, str] = Field(default_factory=dict)
    """Hybrid inference: POST /v1/score answers for model NAME with this bundle (`OTHER/VERSION`, or `OTHER`
    for its newest version on the bundle server); by default with the very version the device serves."""
    value_matrices: Path | None = None
    """Business impact: YAML file of a cost/benefit matrix per model (value of each actual/predicted outcome,
    docs/loop.md); GET /v1/impact and the dashboard's model page estimate each version's value from it."""
    feedback_rows_retention_days: float = Field(default=30.0, gt=0)
    """Feedback rows sent by devices (opt-in) are deleted after this many days."""
    feedback_rows_max: int = Field(default=1_000_000, ge=1)
    """At most this many feedback rows are kept (the oldest are deleted first)."""
    retrain_policies: list[Path] = Field(default_factory=list)
    """Retraining policies (YAML, docs/loop.md) run on their triggers: a new firing of an alert rule they name
    on a device running their model, or their schedule. Each job is `edgeloop retrain` in its own process."""
    retrain_token: str | None = None
    """Operator token the retraining jobs use to call this cloud (default: the first of operator_tokens)."""
    retrain_tracking_uri: str | None = None
    """MLflow tracking URI of the retraining jobs (default: sqlite in $EDGELOOP_HOME)."""
    retrain_workdir: Path = Field(default_factory=lambda: edgeloop_home() / "retrain")
    """Where retraining jobs write their combined data, bundles and logs."""
    retrain_cooldown_s: float = Field(default=3600.0, ge=0)
    """A policy is not triggered again within this many seconds of its last start."""
    retrain_tick_s: float = Field(default=5.0, gt=0)
    """How often new alert firings and schedules are checked for retraining."""
    registry_aliases: bool = True
    """After each promotion and rollback, point the MLflow registry alias `fleet-<group>` (and `champion`, see
    registry_champion_group) at the version the group runs, and keep the version tag `edgeloop.fleet_groups`
    (docs/cloud.md). Without registry access the cloud says so once at start and works on."""
    registry_tracking_uri: str | None = None
    """MLflow tracking URI of that registry; unset: the one `edgeloop train` uses (EDGELOOP_TRACKING_URI,
    MLFLOW_TRACKING_URI, else sqlite in $EDGELOOP_HOME when that file exists)."""
    registry_champion_group: str | None = None
    """The group whose promotions and rollbacks also move `@champion`, so that `NAME@champion` is the version
    that group runs; unset: the cloud never moves @champion (`edgeloop train` sets it on a name's first
    version)."""

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"mqtt_url {value!r} must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
        return value

    @property
    def base_url(self) -> str:
        """The URL devices use to reach the bundle server."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

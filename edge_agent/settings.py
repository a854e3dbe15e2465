"""Edge agent settings: env prefix EDGELOOP_AGENT_, config file table [agent], CLI flags on top.

EDGELOOP_AGENT_TOKEN=s3cret EDGELOOP_AGENT_MQTT_URL=mqtt://broker:1883 edgeloop agent
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from contracts.labels import check_labels, parse_labels
from contracts.settings import EdgeloopSettings, edgeloop_home
from contracts.signing import PUBLIC_KEY_FILE
from contracts.topics import validate_id

__all__ = ["AgentSettings", "default_device_id"]


def default_device_id() -> str:
    """The host name, made safe for topic names (letters, digits, '.', '_', '-'; at most 64 characters)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip("-.") or "edge-device"
    return name[:64]


class AgentSettings(EdgeloopSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_AGENT_", extra="ignore", use_attribute_docstrings=True)
    config_section: ClassVar[str] = "agent"

    state_dir: Path = Field(default_factory=lambda: edgeloop_home() / "agent")
    """Model store: installed bundles, the `current` pointer, the event counter ($EDGELOOP_HOME/agent)."""
    bundle: Path | None = None
    """A bundle directory to install at start (a device with no cloud); never replaces a newer current model."""
    host: str = "127.0.0.1"
    """Address the REST API listens on; 0.0.0.0 to accept other machines (set a token then)."""
    port: int = Field(default=8080, ge=1, le=65535)
    """Port of the REST API."""
    token: str | None = None
    """Bearer token required by /v1/* (health and /metrics stay open); unset = no auth, with a warning."""
    device_id: str = Field(default_factory=default_device_id)
    """This device's id in MQTT topics (default: the host name)."""
    group: str = "default"
    """Fleet group whose desired state this device follows unless a device-level one is set."""
    labels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    """Labels this device reports to the cloud in its reported state (hardware class, site, firmware, any
    key=value), which rollouts select on (`edgeloop deploy --selector site=graz,hw=pi4`). Env:
    `EDGELOOP_AGENT_LABELS="site=graz,hw=pi4"`; config file: `labels = {site = "graz", hw = "pi4"}`."""
    mqtt_url: str | None = None
    """Broker, mqtt://HOST:PORT or mqtts://HOST:PORT (TLS); unset = offline, serve the local model only."""
    mqtt_username: str | None = None
    """Broker user name."""
    mqtt_password: str | None = None
    """Broker password."""
    mqtt_ca_file: Path | None = None
    """CA bundle that signed the broker's certificate (mqtts://); default: the system's CAs."""
    mqtt_cert_file: Path | None = None
    """Client certificate for mutual TLS."""
    mqtt_key_file: Path | None = None
    """Private key of the client certificate."""
    mqtt_keepalive_s: int = Field(default=30, ge=5)
    """MQTT keep-alive; the broker publishes the last will (offline) after 1.5x this without a ping."""
    mqtt_reconnect_min_s: float = Field(default=1.0, gt=0)
    """First delay before reconnecting to the broker; doubles on each failure."""
    mqtt_reconnect_max_s: float = Field(default=60.0, gt=0)
    """Longest delay between reconnection attempts."""
    public_key: Path | None = None
    """Ed25519 public key that must have signed every bundle (default: $EDGELOOP_HOME/keys/edgeloop-signing.pub
    when present): the key the device is provisioned with; a key rotation announced on edgeloop/v1/keys (signed
    by a trusted key) replaces the set, kept in state_dir/trusted-keys.json. Without one, updates over MQTT are
    refused and local bundles are checked by sha256 only."""
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    """Largest request body accepted by /v1/predict (413 above)."""
    max_batch: int = Field(default=1000, ge=1)
    """Most records in one /v1/predict batch (413 above)."""
    explain_top_k: int = Field(default=5, ge=1)
    """Features listed per record by POST /v1/explain (largest |contribution| first); `?top_k=` overrides it."""
    download_timeout_s: float = Field(default=30.0, gt=0)
    """Socket timeout of a bundle download (connect and each read)."""
    download_max_bytes: int = Field(default=512 << 20, ge=1)
    """Refuse bundles whose model.onnx is larger than this, before downloading."""
    download_retries: int = Field(default=3, ge=0)
    """Extra attempts after a failed download (network errors and HTTP 5xx; 4xx fails at once)."""
    download_backoff_s: float = Field(default=1.0, ge=0)
    """Wait before the first retry; doubles on each retry."""
    keep_versions: int = Field(default=3, ge=1)
    """Bundles kept in the store for rollback, the current one included."""
    telemetry_interval_s: float = Field(default=60.0, gt=0)
    """Seconds per telemetry window (counts, drift, accuracy, resources) published over MQTT."""
    psi_moderate: float = Field(default=0.1, ge=0)
    """PSI at or above which a feature's drift band is `moderate`."""
    psi_significant: float = Field(default=0.25, ge=0)
    """PSI above which a feature's drift band is `significant`."""
    drift_alpha: float = Field(default=0.01, gt=0, lt=1)
    """A window's feature is `drifted` when its PSI is at least psi_significant (the minimum effect) and its
    chi-square p-value, adjusted across the features (drift_correction), is below this (docs/loop.md)."""
    drift_min_expected: float = Field(default=5.0, ge=0)
    """Bins and categories expected to hold fewer records than this in a window are pooled before the test."""
    drift_correction: Literal["holm", "bh"] = "holm"
    """Multiple-testing control across features: `holm` (family-wise error) or `bh` (false discovery rate)."""
    outbox_max_messages: int = Field(default=50_000, ge=10)
    """Messages kept on disk while the broker is away; past it the oldest windows are dropped and counted."""
    outbox_max_inflight: int = Field(default=100, ge=1)
    """QoS 1 messages sent and not yet acknowledged by the broker, at most."""
    cloud_ack: bool = True
    """End-to-end acknowledgement: keep what the broker acknowledged until the cloud's watermark says it is stored,
    and send the rest again (docs/mqtt.md). Off = delete on the broker's PUBACK."""
    ack_resend_s: float = Field(default=30.0, gt=0)
    """A message the broker acknowledged but the cloud's watermark does not cover after this many seconds is sent
    again (everything not covered is also sent again after each reconnection)."""
    ack_fallback_s: float = Field(default=60.0, gt=0)
    """A device that has never received an acknowledgement (a cloud older than them) waits this long after a
    PUBACK, then deletes on PUBACK as before, and says so once."""
    outbox_refused_retry_s: float = Field(default=300.0, gt=0)
    """A message the broker refuses (MQTT 5 PUBACK reason code >= 0x80, e.g. 0x87: its ACL does not grant the
    topic) stays in the outbox, counted, and is offered again after this many seconds and after every
    reconnection, never in a loop."""
    feedback_capacity: int = Field(default=100_000, ge=1)
    """Recent prediction ids remembered for POST /v1/feedback (oldest forgotten first)."""
    runtime: Literal["auto", "onnxruntime", "numpy"] = "auto"
    """Model runtime: `onnxruntime`, `numpy` (numpy only: 32-bit ARM, smallest memory; the operators the converter
    emits) or `auto` = onnxruntime when it can be imported, else numpy. /v1/model and /metrics say which serves."""
    intra_op_threads: int = Field(default=1, ge=0)
    """onnxruntime threads per prediction; 1 is fastest for single records, 0 = one per core (big batches)."""
    micro_batch: bool = True
    """Concurrent small prediction requests that wait in one turn of the event loop share one model call
    (edge_agent/coalesce.py); each answer is the one it would get alone. Off: one model call per request."""
    hybrid_threshold: float | None = Field(default=None, gt=0, le=1)
    """Hybrid inference: records whose highest class probability is under this are sent to the cloud's
    POST /v1/score (hybrid_url); unset = off, the edge model answers everything."""
    hybrid_url: str | None = None
    """Base URL of `edgeloop cloud` for hybrid inference (e.g. http://cloud:8700)."""
    hybrid_token: str | None = None
    """Bearer token (viewer) for the cloud's scoring endpoint."""
    hybrid_deadline_s: float = Field(default=0.15, gt=0, le=10)
    """Longest wait for the cloud's answer; past it the edge model answers (`edge_fallback`)."""
    request_key_fields: list[str] = Field(default_factory=list)
    """Record fields that are A/B request keys, not model inputs (e.g. ["machine_id"]; env as JSON): always
    accepted by /v1/predict and /v1/explain and dropped before the schema check, with or without a split. The
    `key_field` of a split is accepted from its start until the agent stops even without this setting; set it
    so that clients sending the key are not refused after a restart once the split has ended."""
    shadow_bundle: Path | None = None
    """A challenger bundle run in shadow beside the served model (verified like any bundle): it predicts
    every record, never answers; telemetry counts agreement and, with feedback, its confusion counts."""
    mqtt_predict: bool = False
    """Opt-in: answer prediction requests over MQTT. A client publishes a /v1/predict body on
    edgeloop/v1/devices/{device_id}/predict; the agent answers on the request's MQTT 5 response topic (else on
    .../predict/response) with its correlation data (docs/mqtt.md). Needs mqtt_url; the broker's ACL is the auth."""
    mqtt_predict_max_waiting: int = Field(default=100, ge=1)
    """MQTT predict requests queued for the answering thread, at most; past it a request is answered at once
    with a 503 problem (PredictQueueFull)."""
    feedback_rows: bool = False
    """Opt-in: when feedback labels a prediction, send its kept input fields with the true label to the cloud
    (topic .../feedback, through the outbox) for retraining. Off by default; needs mqtt_url."""
    feedback_rows_sample_rate: float = Field(default=1.0, gt=0, le=1)
    """Share of predictions that keep their input fields for a possible feedback row (decided at prediction
    time; the others are never kept)."""
    feedback_rows_fields: list[str] | None = None
    """Input fields kept in a feedback row (data minimisation); unset = every input of the model."""
    feedback_rows_max_per_hour: int = Field(default=1000, ge=1)
    """Most feedback rows sent per hour; past it rows are dropped and counted."""

    @field_validator("device_id", "group")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        return validate_id(value, "device id / group")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if isinstance(value, str):
            return parse_labels(value)
        if isinstance(value, dict):
            return check_labels(value)
        raise ValueError("labels must be key=value pairs (site=graz,hw=pi4) or a table")

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"mqtt_url {value!r} must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
        return value

    def resolved_public_key(self) -> Path | None:
        """The configured key, else the signer's key next to the local tracking store when it exists."""
        if self.public_key is not None:
            return self.public_key
        fallback = edgeloop_home() / "keys" / PUBLIC_KEY_FILE
        return fallback if fallback.is_file() else None

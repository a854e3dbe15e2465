"""Trainer and converter settings (env prefix EDGELOOP_, config file table [train])."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from contracts.settings import EdgeloopSettings, edgeloop_home
from contracts.tracking import default_tracking_uri

__all__ = ["TrainSettings"]


class TrainSettings(EdgeloopSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_", extra="ignore", use_attribute_docstrings=True)
    config_section: ClassVar[str] = "train"

    tracking_uri: str = Field(default_factory=default_tracking_uri)
    """MLflow tracking URI: an `mlflow server` URL (http://host:5000), postgresql://... or sqlite:///...
    (`--tracking-uri` > EDGELOOP_TRACKING_URI > this table > MLFLOW_TRACKING_URI > SQLite in EDGELOOP_HOME)."""
    artifact_root: Path = Field(default_factory=lambda: edgeloop_home() / "mlartifacts")
    """Where new experiments store artifacts when the tracking store is local."""
    seed: int = 42
    """Seed of the held-out split and of the estimators."""
    test_size: float = 0.2
    """Share of rows held out (stratified) for evaluation and for the converter's parity gate."""
    parity_tolerance: float = 1e-5
    """Max abs difference of probabilities allowed between sklearn and ONNX on held-out rows."""
    keys_dir: Path = Field(default_factory=lambda: edgeloop_home() / "keys")
    """Directory with edgeloop-signing.key; `edgeloop convert` creates a key pair there if none exists."""

"""Converter settings (env prefix EDGELOOP_, config file table [convert])."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from contracts.settings import EdgeloopSettings, edgeloop_home
from contracts.tracking import default_tracking_uri

__all__ = ["ConvertSettings"]


class ConvertSettings(EdgeloopSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_", extra="ignore", use_attribute_docstrings=True)
    config_section: ClassVar[str] = "convert"

    tracking_uri: str = Field(default_factory=default_tracking_uri)
    """MLflow tracking URI to read the registry from (`--tracking-uri` > EDGELOOP_TRACKING_URI > this table >
    MLFLOW_TRACKING_URI > SQLite in EDGELOOP_HOME, as the trainer)."""
    keys_dir: Path = Field(default_factory=lambda: edgeloop_home() / "keys")
    """Directory with edgeloop-signing.key; a new pair is generated there if none exists (unless require_key)."""
    require_key: bool = False
    """Refuse to convert when edgeloop-signing.key is missing from keys_dir instead of generating a new pair
    (`--require-key`; set it in CI, where a new key would sign bundles that every device refuses)."""
    parity_tolerance: float = 1e-5
    """Max abs probability difference allowed between sklearn and ONNX on held-out rows. float32 inference
    differs from float64 by about 1e-7 on these models; 1e-5 leaves 100x headroom and still catches any real
    divergence (a flipped split moves a probability by 1e-3 or more)."""
    min_metrics: dict[str, float] = Field(default_factory=dict)
    """Metric gate: lowest accepted held-out metric per name, e.g. {"roc_auc": 0.8} (`--min-metric roc_auc=0.8`;
    env as JSON). A model below a floor, or without that metric, is not converted. Empty = no gate."""
    golden_samples: int = 12
    """How many held-out rows become golden samples in the manifest (each class represented)."""
    target_opset: int = 17
    """ONNX default-domain opset (17 runs on onnxruntime 1.14 and newer, common on devices)."""

"""Settings plumbing shared by every deployable: defaults < config file < environment < CLI flags.

Each deployable declares one `BaseSettings` subclass with an env prefix (EDGELOOP_AGENT_, EDGELOOP_CLOUD_,
EDGELOOP_) and a docstring per field. The config file is `edgeloop.toml` or `edgeloop.yaml` in the working
directory, or the path in EDGELOOP_CONFIG; each deployable reads its own table (`[agent]`, `[cloud]`,
`[train]`).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from contracts.errors import InputError

__all__ = ["EdgeloopSettings", "config_file", "edgeloop_home", "read_section"]


def edgeloop_home() -> Path:
    """Where local state lives by default (tracking store, keys, bundles): $EDGELOOP_HOME or ./.edgeloop."""
    return Path(os.environ.get("EDGELOOP_HOME", ".edgeloop")).resolve()


def config_file() -> Path | None:
    explicit = os.environ.get("EDGELOOP_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise InputError(f"EDGELOOP_CONFIG points at {path}, which does not exist")
        return path
    for name in ("edgeloop.toml", "edgeloop.yaml", "edgeloop.yml"):
        if Path(name).is_file():
            return Path(name)
    return None


def read_section(path: Path, section: str) -> dict[str, Any]:
    """The table `section` of config file `path` ({} when absent); InputError when the file is malformed."""
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else (yaml.safe_load(text) or {})
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"config file {path} is malformed: {first}") from None
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must be a table of sections")
    value = data.get(section, {})
    if not isinstance(value, dict):
        raise InputError(f"config file {path}: [{section}] must be a table")
    return value


class _FileSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], section: str) -> None:
        super().__init__(settings_cls)
        path = config_file()
        self._values = read_section(path, section) if path else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {key: value for key, value in self._values.items() if key in self.settings_cls.model_fields}


class EdgeloopSettings(BaseSettings):
    """Base class: subclasses set `config_section` and `model_config = SettingsConfigDict(env_prefix=...)`."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_", extra="ignore")
    config_section: ClassVar[str] = "edgeloop"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls, cls.config_section))

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(env var, default, doc) for every field, for --help and docs/settings.md."""
        prefix = cls.model_config.get("env_prefix", "")
        rows = []
        for name, field in cls.model_fields.items():
            value = field.get_default(call_default_factory=True) if field.default_factory else field.default
            default = "" if value is None else str(value)
            rows.append((f"{prefix}{name.upper()}", default, " ".join((field.description or "").split())))
        return rows

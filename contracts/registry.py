"""Model references and their lookup in the MLflow registry, one way for the converter, batch scoring,
`edgeloop deploy` and `edgeloop model-card`.

A reference is `NAME@ALIAS` (`NAME@latest` = the newest version), `NAME/VERSION`, or, where a caller allows
it, `runs:/RUN_ID/PATH`. mlflow is imported inside the functions that need it: the edge agent never imports
this module, and parsing a reference needs no mlflow at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from contracts.errors import InputError, NotFoundError

__all__ = ["ModelReference", "find_model_version", "is_reference", "parse_reference"]

_ALIAS = re.compile(r"^(?P<name>[^@/]+)@(?P<alias>[A-Za-z0-9_-]+)$")
_VERSION = re.compile(r"^(?P<name>[^@/]+)/(?P<version>\d+)$")
_RUN = re.compile(r"^runs:/(?P<run>[0-9a-f]{32})/(?P<path>.+)$")
_FORMS = "NAME@ALIAS, NAME@latest or NAME/VERSION"


@dataclass(frozen=True)
class ModelReference:
    text: str
    """What the user wrote."""
    name: str | None
    """The registered model's name; None for a run reference."""
    alias: str | None = None
    version: int | None = None
    run_id: str | None = None
    """Set for `runs:/RUN_ID/PATH` only."""


def parse_reference(text: str, allow_runs: bool = False) -> ModelReference:
    """The parts of a reference; InputError naming the accepted forms otherwise."""
    if match := _ALIAS.match(text):
        return ModelReference(text, match["name"], alias=match["alias"])
    if match := _VERSION.match(text):
        return ModelReference(text, match["name"], version=int(match["version"]))
    if allow_runs and (match := _RUN.match(text)):
        return ModelReference(text, None, run_id=match["run"])
    forms = f"{_FORMS} or runs:/RUN_ID/model" if allow_runs else _FORMS
    raise InputError(f"'{text}' is not a model reference; use {forms}")


def is_reference(text: str) -> bool:
    """True when `text` has the form of a registry reference (NAME@ALIAS or NAME/VERSION)."""
    return bool(_ALIAS.match(text) or _VERSION.match(text))


def find_model_version(client: Any, reference: ModelReference) -> Any:
    """The registry's ModelVersion for a NAME@ALIAS / NAME@latest / NAME/VERSION reference, or NotFoundError
    saying what exists instead (known models, the model's aliases, a missing version)."""
    from mlflow.exceptions import MlflowException

    name = reference.name
    if name is None:
        raise InputError(f"'{reference.text}' names a run, not a registered model version")
    try:
        client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models(max_results=20)]
        raise NotFoundError(
            f"registered model '{name}' not found (known: {', '.join(known) or 'none'}); train it first"
        ) from None
    try:
        if reference.alias == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise NotFoundError(f"model '{name}' has no versions yet; train it first")
            return max(versions, key=lambda v: int(v.version))
        if reference.alias is not None:
            return client.get_model_version_by_alias(name, reference.alias)
        return client.get_model_version(name, str(reference.version))
    except MlflowException:
        if reference.alias is not None:
            aliases = sorted(client.get_registered_model(name).aliases)
            raise NotFoundError(
                f"model '{name}' has no alias '{reference.alias}' (aliases: {', '.join(aliases) or 'none'})"
            ) from None
        raise NotFoundError(f"model '{name}' has no version {reference.version}") from None

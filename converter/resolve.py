"""Resolve a model reference to a registry version and its run: `NAME@ALIAS` (`NAME@latest` is the newest
version), `NAME/VERSION` or `runs:/ID/model`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from contracts.errors import InputError, NotFoundError

__all__ = ["ResolvedModel", "resolve_reference"]

_ALIAS = re.compile(r"^(?P<name>[^@/]+)@(?P<alias>[A-Za-z0-9_-]+)$")
_VERSION = re.compile(r"^(?P<name>[^@/]+)/(?P<version>\d+)$")
_RUN = re.compile(r"^runs:/(?P<run>[0-9a-f]{32})/(?P<path>.+)$")


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: int
    run_id: str
    model_uri: str
    registered: bool


def resolve_reference(client: object, reference: str) -> ResolvedModel:
    from mlflow.exceptions import MlflowException

    try:
        if match := _ALIAS.match(reference):
            name, alias = match["name"], match["alias"]
            _require_model(client, name)
            if alias == "latest":
                versions = client.search_model_versions(f"name='{name}'")  # type: ignore[attr-defined]
                if not versions:
                    raise NotFoundError(f"model '{name}' has no versions yet; train it first")
                mv = max(versions, key=lambda v: int(v.version))
                return ResolvedModel(name, int(mv.version), mv.run_id, f"models:/{name}/{mv.version}", True)
            try:
                mv = client.get_model_version_by_alias(name, alias)  # type: ignore[attr-defined]
            except MlflowException:
                aliases = sorted(client.get_registered_model(name).aliases)  # type: ignore[attr-defined]
                raise NotFoundError(
                    f"model '{name}' has no alias '{alias}' (aliases: {', '.join(aliases) or 'none'})"
                ) from None
            return ResolvedModel(name, int(mv.version), mv.run_id, f"models:/{name}/{mv.version}", True)
        if match := _VERSION.match(reference):
            name, version = match["name"], match["version"]
            _require_model(client, name)
            try:
                mv = client.get_model_version(name, version)  # type: ignore[attr-defined]
            except MlflowException:
                raise NotFoundError(f"model '{name}' has no version {version}") from None
            return ResolvedModel(name, int(mv.version), mv.run_id, f"models:/{name}/{mv.version}", True)
        if match := _RUN.match(reference):
            try:
                run = client.get_run(match["run"])  # type: ignore[attr-defined]
            except MlflowException:
                raise NotFoundError(f"run {match['run']} not found") from None
            experiment = client.get_experiment(run.info.experiment_id)  # type: ignore[attr-defined]
            return ResolvedModel(experiment.name, 0, match["run"], reference, False)
    except MlflowException as exc:
        raise NotFoundError(f"cannot resolve '{reference}': {exc.message.splitlines()[0]}") from None
    raise InputError(f"'{reference}' is not a model reference; use NAME@ALIAS, NAME/VERSION or runs:/RUN_ID/model")


def _require_model(client: object, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)  # type: ignore[attr-defined]
    except MlflowException:
        known = [m.name for m in client.search_registered_models(max_results=20)]  # type: ignore[attr-defined]
        raise NotFoundError(
            f"registered model '{name}' not found (known: {', '.join(known) or 'none'}); train it first"
        ) from None

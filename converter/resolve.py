"""Resolve a model reference to a registry version and its run: `NAME@ALIAS` (`NAME@latest` is the newest
version), `NAME/VERSION` or `runs:/ID/model` (parsing and lookup: contracts.registry)."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.errors import NotFoundError
from contracts.registry import find_model_version, parse_reference

__all__ = ["ResolvedModel", "resolve_reference"]


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: int
    run_id: str
    model_uri: str
    registered: bool


def resolve_reference(client: object, reference: str) -> ResolvedModel:
    from mlflow.exceptions import MlflowException

    parsed = parse_reference(reference, allow_runs=True)
    try:
        if parsed.run_id is not None:
            try:
                run = client.get_run(parsed.run_id)  # type: ignore[attr-defined]
            except MlflowException:
                raise NotFoundError(f"run {parsed.run_id} not found") from None
            experiment = client.get_experiment(run.info.experiment_id)  # type: ignore[attr-defined]
            return ResolvedModel(experiment.name, 0, parsed.run_id, reference, False)
        mv = find_model_version(client, parsed)
    except MlflowException as exc:
        raise NotFoundError(f"cannot resolve '{reference}': {exc.message.splitlines()[0]}") from None
    return ResolvedModel(mv.name, int(mv.version), mv.run_id, f"models:/{mv.name}/{mv.version}", True)

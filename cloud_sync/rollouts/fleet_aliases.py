"""Registry aliases that follow the fleet: after a promotion or a rollback, the MLflow registry names the
version each group runs, so `NAME@fleet-<group>` (and `NAME@champion` for the group named by the cloud's
`registry_champion_group`) resolve to the very bundle those devices serve.

    fleet-<group>          every group ('.' in a group id becomes '_': aliases take letters, digits, _ and -)
    champion               the group named by `registry_champion_group` (unset: the cloud leaves @champion alone)
    edgeloop.fleet_groups  version tag: the groups running that version, comma-separated and sorted

The registry is told on a private thread after the fleet was (a slow or unreachable registry never holds a
rollout up); a failure is logged in one line and the next promotion or rollback sets the aliases again. Without
registry access (`FleetAliases.connect` finds no mlflow, no store, or an unreachable server) the cloud says
so once at start and uses `NoRegistry`. mlflow is imported only here, lazily.
"""

from __future__ import annotations

import importlib.util
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from contracts.errors import EdgeloopError
from contracts.logs import log_event
from contracts.tracking import ensure_tracking_reachable, resolve_tracking_uri, safe_uri

__all__ = ["GROUPS_TAG", "FleetAliases", "MlflowFleetAliases", "NoRegistry", "connect_registry", "fleet_alias"]

logger = logging.getLogger("edgeloop.cloud.registry")
GROUPS_TAG = "edgeloop.fleet_groups"
CHAMPION = "champion"


def fleet_alias(group: str) -> str:
    return "fleet-" + group.replace(".", "_")


class FleetAliases(Protocol):
    def group_runs(self, name: str, version: int, group: str) -> None:
        """Group `group` now runs registered model `name` version `version`."""

    def close(self) -> None: ...


class NoRegistry:
    """No registry access: promotions and rollbacks move no alias."""

    def group_runs(self, name: str, version: int, group: str) -> None:
        return None

    def close(self) -> None:
        return None


class MlflowFleetAliases:
    def __init__(self, tracking_uri: str, champion_group: str | None = None) -> None:
        self.uri = tracking_uri
        self.champion_group = champion_group
        self._client: Any = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-aliases")  # in order

    def group_runs(self, name: str, version: int, group: str) -> None:
        self._worker.submit(self._move_logged, name, version, group)

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    @property
    def client(self) -> Any:
        """The MlflowClient, made on the worker's first move (mlflow is not imported at the cloud's start)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.uri)
        return self._client

    def _move_logged(self, name: str, version: int, group: str) -> None:
        try:
            aliases = self.move(name, version, group)
        except Exception as exc:  # the registry is down or refuses: the fleet is right, the registry catches up later
            detail = (str(exc).splitlines() or [""])[0][:200]
            log_event(logger, "registry aliases not moved", level=logging.WARNING, model=f"{name}/{version}",
                      group=group, error=type(exc).__name__, detail=detail)  # fmt: skip
            return
        log_event(logger, "registry aliases moved", model=f"{name}/{version}", group=group, aliases=",".join(aliases))

    def move(self, name: str, version: int, group: str) -> list[str]:
        """Move the group between the versions' tags, then point the group's aliases at `version`; the aliases set.

        The aliases move last, so whoever sees an alias name a version also sees its tag (the registry profile read
        the tag right after the alias and once found it not yet written)."""
        from mlflow.exceptions import MlflowException

        alias = fleet_alias(group)
        try:
            before: Any = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            before = None
        if before is not None and int(before.version) != version:
            self._tag_groups(name, int(before.version), lambda groups: groups - {group})
        self._tag_groups(name, version, lambda groups: groups | {group})
        self.client.set_registered_model_alias(name, alias, str(version))
        moved = [alias]
        if group == self.champion_group:
            self.client.set_registered_model_alias(name, CHAMPION, str(version))
            moved.append(CHAMPION)
        return moved

    def _tag_groups(self, name: str, version: int, change: Any) -> None:
        current = self.client.get_model_version(name, str(version)).tags.get(GROUPS_TAG, "")
        groups = sorted(change({g for g in current.split(",") if g}))
        if groups:
            self.client.set_model_version_tag(name, str(version), GROUPS_TAG, ",".join(groups))
        else:
            self.client.delete_model_version_tag(name, str(version), GROUPS_TAG)


def connect_registry(tracking_uri: str | None, champion_group: str | None, enabled: bool = True) -> FleetAliases:
    """The registry the aliases live in (`tracking_uri`, else the one `edgeloop train` uses), or NoRegistry,
    said once in the log, when there is none to reach."""
    if not enabled:
        log_event(logger, "registry aliases off (registry_aliases=false): promotions move no alias")
        return NoRegistry()
    uri = resolve_tracking_uri(tracking_uri)
    why = None
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        why = f"no MLflow store at {uri.removeprefix('sqlite:///')}"
    else:
        try:
            ensure_tracking_reachable(uri)
            if importlib.util.find_spec("mlflow") is not None:
                log_event(logger, "registry aliases follow the fleet", registry=safe_uri(uri),
                          champion_group=champion_group or "-")  # fmt: skip
                return MlflowFleetAliases(uri, champion_group)
            why = "mlflow is not installed (pip install 'edgeloop[train]')"
        except EdgeloopError as exc:
            why = exc.message
    fix = "set EDGELOOP_CLOUD_REGISTRY_TRACKING_URI or MLFLOW_TRACKING_URI"
    log_event(logger, "no registry access: promotions and rollbacks move no registry alias",
              level=logging.WARNING, registry=safe_uri(uri), reason=why, fix=fix)  # fmt: skip
    return NoRegistry()

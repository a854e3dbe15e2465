"""deploy/compose.yaml read the way Docker Compose reads it (merge keys, `${VAR}` / `${VAR:-default}` /
`${VAR:?error}` interpolation, `$$`), and turned into the native commands of tests/test_compose_topology.py:
each service's command, environment and healthcheck with the compose network's names and container paths
replaced by this machine's ports and directories. The native test runs what the compose file says, not a copy.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["COMPOSE", "DEPLOY", "ROOT", "Service", "dockerfile_entrypoint", "interpolate", "load_compose"]

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's interpolation of one string: `$$` is a literal `$`; an unset `${VAR:?msg}` is an error."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        if variables.get(name):
            return variables[name]
        if op == ":-":
            return arg
        if op == ":?":
            raise ValueError(f"compose variable {name} is required: {arg}")
        return ""

    return _VARIABLE.sub(replace, value)


@dataclass
class Service:
    """One service of the compose file after interpolation, with what the native run replaces in it."""

    name: str
    spec: dict[str, Any]
    replacements: list[tuple[str, str]] = field(default_factory=list)

    def native(self, value: str) -> str:
        """One pass, longest match first: a replacement's result is never replaced again (a port 38700 is not
        taken for 8700)."""
        if not self.replacements:
            return value
        olds = sorted((old for old, _ in self.replacements), key=len, reverse=True)
        table = dict(self.replacements)
        return re.sub("|".join(re.escape(old) for old in olds), lambda m: table[m.group(0)], value)

    @property
    def command(self) -> list[str]:
        command = self.spec.get("command", [])
        return [self.native(part) for part in (shlex.split(command) if isinstance(command, str) else command)]

    @property
    def environment(self) -> dict[str, str]:
        return {key: self.native(str(value)) for key, value in (self.spec.get("environment") or {}).items()}

    @property
    def healthcheck(self) -> list[str]:
        """The healthcheck as an argv: CMD's list as is, CMD-SHELL through `sh -c`."""
        test = self.spec["healthcheck"]["test"]
        kind, rest = test[0], [self.native(part) for part in test[1:]]
        return ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest

    def volume_sources(self) -> dict[str, str]:
        """container path -> host source (a path relative to deploy/, or a named volume)."""
        mounts = {}
        for volume in self.spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[target] = source
        return mounts


def load_compose(variables: dict[str, str]) -> dict[str, Service]:
    """The services of deploy/compose.yaml, merge keys resolved (PyYAML applies `<<`), strings interpolated."""
    raw = yaml.safe_load(COMPOSE.read_text())

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return interpolate(node, variables)
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        return node

    return {name: Service(name, walk(spec)) for name, spec in raw["services"].items()}


def dockerfile_entrypoint(dockerfile: Path) -> list[str]:
    """The exec-form ENTRYPOINT of a Dockerfile (what a compose `command` is appended to)."""
    for line in dockerfile.read_text().splitlines():
        if line.startswith("ENTRYPOINT "):
            return list(json.loads(line.removeprefix("ENTRYPOINT ")))
    raise AssertionError(f"{dockerfile} has no exec-form ENTRYPOINT")

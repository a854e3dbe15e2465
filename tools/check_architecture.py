"""The house rules import-linter cannot state, checked on the source with `ast` (run by `make lint`).

    no-private-import   no module imports another module's private name (`from x import _y`), except a private
                        submodule of its own package (`from pkg import _impl`)
    no-dunder-import    no `__import__(...)` call in the packages: imports are written at the top, where tools see them
    no-import-cycle     no import cycle between the modules of a package

Every import counts for the cycle check, wherever it is written (top level, inside a function, under
`if TYPE_CHECKING:`): a lazy or type-only import still ties the two modules together. `from pkg import name`
is an edge to `pkg.name` when that is a module, else to `pkg` (its `__init__`). Cycles are the strongly
connected components of that graph (Tarjan), each reported with one of its circles.

    python tools/check_architecture.py [--root DIR] [--except MODULE_PREFIX]... [PACKAGE ...]
                                                   # exit 1, one line per broken rule naming it
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PACKAGES", "Violation", "check", "main"]

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("contracts", "trainer", "converter", "edge_agent", "cloud_sync", "edgeloop")


@dataclass(frozen=True)
class Violation:
    rule: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"architecture rule '{self.rule}' broken in {self.where}: {self.detail}"


@dataclass(frozen=True)
class Module:
    name: str
    path: str
    """Relative to the root, for messages."""
    is_package: bool
    tree: ast.Module


def _excluded(name: str, excluded: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in excluded)


def _modules(root: Path, packages: tuple[str, ...], excluded: tuple[str, ...]) -> dict[str, Module]:
    found: dict[str, Module] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            if _excluded(name, excluded):
                continue
            where = path.relative_to(root).as_posix()
            found[name] = Module(name, where, is_package, ast.parse(path.read_text(), where))
    return found


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module name of a `from ... import` (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.name.split(".")
    base = base if module.is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: Module, known: dict[str, Module]) -> Iterator[tuple[str, str | None, int]]:
    """(target module, imported name or None, line) for every import of one of our modules."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in _tops(known):
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            if source.split(".")[0] not in _tops(known):
                continue
            for alias in node.names:
                yield source, alias.name, node.lineno


def _tops(known: dict[str, Module]) -> set[str]:
    return {name.split(".")[0] for name in known}


def _private_imports(module: Module, known: dict[str, Module]) -> Iterator[Violation]:
    top = module.name.split(".")[0]
    for source, name, line in _imports(module, known):
        if name is None or not name.startswith("_") or name.startswith("__"):
            continue
        if f"{source}.{name}" in known and source.split(".")[0] == top:
            continue  # a private submodule of its own package
        yield Violation(
            "no-private-import",
            f"{module.path}:{line}",
            f"'from {source} import {name}' uses a private name of another module: make it public there "
            "(no underscore, in __all__) or move it",
        )


def _dunder_imports(module: Module) -> Iterator[Violation]:
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "__import__":
                yield Violation(
                    "no-dunder-import",
                    f"{module.path}:{node.lineno}",
                    "__import__(...) hides an import from readers and tools: write an import statement at the top",
                )


def _graph(known: dict[str, Module], excluded: tuple[str, ...]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in known}
    for module in known.values():
        for source, name, _ in _imports(module, known):
            target = f"{source}.{name}" if name is not None and f"{source}.{name}" in known else source
            if _excluded(target, excluded) or (name is not None and _excluded(f"{source}.{name}", excluded)):
                continue  # not checked yet: no edge (it must not fall back to its parent package)
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != module.name:
                graph[module.name].add(target)
    return graph


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _circle(graph: dict[str, set[str]], members: list[str]) -> list[str]:
    """One circle through the component's first module (breadth-first, inside the component)."""
    inside, start = set(members), members[0]
    parents: dict[str, str] = {}
    queue = [start]
    for node in queue:
        for child in sorted(graph[node] & inside):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return [*reversed(path), start]
            if child not in parents:
                parents[child] = node
                queue.append(child)
    return members


def check(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES, excluded: tuple[str, ...] = ()) -> list[Violation]:
    """Every broken rule in `packages` (folders under `root`), leaving out the modules under `excluded` prefixes."""
    known = _modules(root, packages, excluded)
    violations: list[Violation] = []
    for module in known.values():
        violations.extend(_private_imports(module, known))
        violations.extend(_dunder_imports(module))
    graph = _graph(known, excluded)
    for members in _components(graph):
        circle = " -> ".join(_circle(graph, members))
        violations.append(
            Violation(
                "no-import-cycle",
                members[0].rsplit(".", 1)[0],
                f"{circle} ({len(members)} modules in the cycle: {', '.join(members)}); move the shared part "
                "into a module both import",
            )
        )
    return violations


def main(argv: list[str]) -> int:
    root, excluded = ROOT, []
    while argv[:1] in (["--root"], ["--except"]):
        if argv[0] == "--root":
            root = Path(argv[1])
        else:
            excluded.append(argv[1])
        argv = argv[2:]
    packages = tuple(argv) or PACKAGES
    violations = check(root, packages, tuple(excluded))
    for violation in violations:
        print(violation)
    if violations:
        print(f"{len(violations)} architecture rule(s) broken (tools/check_architecture.py)")
        return 1
    left_out = f"; not yet: {', '.join(excluded)}" if excluded else ""
    rules = "no-private-import, no-dunder-import, no-import-cycle"
    print(f"architecture rules kept: {rules} ({', '.join(packages)}{left_out})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""tools/check_architecture.py on small package trees written for the test: each rule fires, naming itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.check_architecture import ROOT, check


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_clean_tree_keeps_every_rule(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/_impl.py": "VALUE = 1\n",
            "pkg/a.py": "from pkg import _impl\nfrom pkg.b import public\n",
            "pkg/b.py": "import json\n\ndef public() -> None:\n    from other import thing\n",
            "other/__init__.py": "thing = 1\n",
        },
    )
    assert check(root, ("pkg", "other")) == []


def test_each_broken_rule_is_named(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import _helper\n",
            "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import C\n_helper = 1\n",
            "pkg/c.py": "def f() -> None:\n    from . import b\n",
            "pkg/d.py": "mod = __import__('pkg.a', fromlist=['x'])\n",
        },
    )
    found = {(v.rule, v.where.replace("\\", "/")) for v in check(root, ("pkg",))}
    assert found == {
        ("no-private-import", "pkg/a.py:1"),
        ("no-dunder-import", "pkg/d.py:1"),
        ("no-import-cycle", "pkg"),
    }
    cycle = next(v for v in check(root, ("pkg",)) if v.rule == "no-import-cycle")
    assert "pkg.b -> pkg.c -> pkg.b" in str(cycle) and str(cycle).startswith("architecture rule 'no-import-cycle'")


def test_the_script_exits_1_and_names_the_rule(tmp_path: Path) -> None:
    script = [sys.executable, str(ROOT / "tools" / "check_architecture.py")]
    ok = subprocess.run([*script, "contracts"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "architecture rules kept" in ok.stdout, ok.stdout + ok.stderr
    bad = _tree(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from pkg.b import _x\n", "pkg/b.py": "_x = 1\n"})
    broken = subprocess.run([*script, "--root", str(bad), "pkg"], capture_output=True, text=True, check=False)
    assert broken.returncode == 1
    assert broken.stdout.startswith("architecture rule 'no-private-import' broken in pkg/a.py:1"), broken.stdout


def test_excluded_modules_are_left_out_without_falling_back_to_their_package(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg import a\n",
            "pkg/a.py": "from pkg.wip.b import thing\n",
            "pkg/wip/__init__.py": "",
            "pkg/wip/b.py": "from pkg.wip.c import _private\nthing = 1\n",
            "pkg/wip/c.py": "from pkg.wip import b\n_private = 2\n",
        },
    )
    assert {v.rule for v in check(root, ("pkg",))} == {"no-private-import", "no-import-cycle"}
    assert check(root, ("pkg",), ("pkg.wip",)) == []  # a.py's edge to pkg.wip.b is not taken for one to pkg

"""The 32-bit Raspberry Pi recipe of docs/raspberry-pi.md (section 1b) is the one `make check-armhf` runs: the same
Debian packages, and the same PyPI requirements (pyproject's base dependencies minus those Debian provides), so
a dependency added to pyproject shows up in the user's recipe or fails here. The emulated run itself is
`make check-arm64` / `make check-armhf` (root, minutes; .ci/run calls them)."""

from __future__ import annotations

import importlib
import re
import shlex
import sys
import tomllib
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "raspberry-pi.md"


def _deploy_module(name: str) -> ModuleType:
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "deploy"))


def _section_1b_commands() -> list[list[str]]:
    section = GUIDE.read_text().split("## 1b.", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(command) for command in block.replace("\\\n", " ").splitlines() if command.strip()]


def test_guide_installs_the_debian_packages_of_the_armhf_profile() -> None:
    profile = _deploy_module("arm_rootfs").PROFILES["armhf"]
    apt = next(words for words in _section_1b_commands() if "apt-get" in words and "install" in words)
    assert set(profile.packages) <= set(apt), f"docs/raspberry-pi.md 1b lacks {set(profile.packages) - set(apt)}"


def test_guide_pip_installs_what_check_armhf_installs() -> None:
    check_arm = _deploy_module("check_arm")
    profile = _deploy_module("arm_rootfs").PROFILES["armhf"]
    wheels = next(words for words in _section_1b_commands() if "--only-binary=:all:" in words)
    documented = [word for word in wheels if re.match(r"^[a-z][a-z0-9_.-]*[<>=]", word)]
    assert documented == check_arm.pypi_requirements(profile)
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert len(documented) + len(profile.from_debian) == len(base), "from_debian names a package pyproject lacks"

"""Debian bookworm ARM userlands for the device profiles (`make check-arm64`, `make check-armhf`), run on x86
under qemu-user through binfmt_misc.

A rootfs is built once by debootstrap and cached OUTSIDE the repository, keyed by architecture, suite and
Debian package list (`/var/cache/edgeloop/rootfs-<arch>-<key>`, or `$EDGELOOP_ROOTFS_CACHE`): a changed list
builds a new one, an unchanged one is reused. Everything here is idempotent on a bare machine: the Debian tools
are installed when missing, binfmt_misc is mounted and qemu's handlers enabled when they are not. Needs root
(debootstrap, chroot, mount). Used by deploy/check_arm.py; see docs/raspberry-pi.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PROFILES", "Profile", "chroot", "ensure_rootfs", "fail", "locked", "mounted"]

SUITE = "bookworm"
_TOOLS = {"debootstrap": "debootstrap", "qemu-user-static": "qemu-aarch64-static", "binfmt-support": "update-binfmts"}
_BINFMT = Path("/proc/sys/fs/binfmt_misc")


@dataclass(frozen=True)
class Profile:
    """One ARM device: its Debian architecture, qemu's name for it, and how the agent is installed there."""

    arch: str
    """Debian architecture (debootstrap --arch)."""
    qemu: str
    """qemu-user's name: the binfmt handler is qemu-<qemu>."""
    packages: tuple[str, ...]
    """Debian packages in the rootfs: installed by apt-get in it after debootstrap (whose own resolver does not
    follow virtual packages such as python3-cryptography's python3-cffi-backend-api-max)."""
    from_debian: tuple[str, ...] = ()
    """Base-install dependencies taken from Debian (a venv with --system-site-packages) instead of PyPI, because
    PyPI has no wheel for this architecture; empty = everything from PyPI's wheels."""


_PYTHON = ("python3", "python3-venv", "ca-certificates")
PROFILES = {
    # Raspberry Pi OS 64-bit: PyPI has aarch64 wheels for every dependency, onnxruntime included.
    "arm64": Profile("arm64", "aarch64", ()),
    # Raspberry Pi OS 32-bit (armv7l): no onnxruntime (the agent serves on its numpy runtime), and no armv7 wheels
    # for numpy, cryptography, psutil, PyYAML or httptools on PyPI: the first four come from Debian, httptools is
    # left out (uvicorn then parses HTTP with h11, pure Python). pydantic-core and orjson have armv7 wheels.
    "armhf": Profile(
        "armhf",
        "arm",
        ("python3-numpy", "python3-nacl", "python3-cryptography", "python3-psutil", "python3-yaml"),
        from_debian=("onnxruntime", "numpy", "pynacl", "cryptography", "psutil", "pyyaml", "httptools"),
    ),
}


def fail(profile: Profile, message: str) -> SystemExit:
    """The one line a failed check ends with (exit status 1); raise what this returns."""
    return SystemExit(f"error: check-{profile.arch}: {message}")


def _run(command: list[str], profile: Profile, what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        print("\n".join(tail))
        raise fail(profile, f"{what} failed (exit {done.returncode}): {' '.join(command[:3])} ...")


def _mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    for path in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if path.exists():
            found = re.search(r"^(?:URIs:|deb)\s+(\S+)", path.read_text(), re.MULTILINE)
            if found and "security" not in found.group(1):
                return found.group(1)
    return "http://deb.debian.org/debian"


def _ensure_tools(profile: Profile) -> None:
    if os.geteuid() != 0:
        raise fail(profile, "needs root (debootstrap, chroot, mount): run it as root or with sudo")
    missing = [package for package, binary in _TOOLS.items() if shutil.which(binary) is None]
    if missing:
        print(f"== installing Debian packages: {' '.join(missing)}")
        _run(["apt-get", "update", "-qq"], profile, "apt-get update")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise fail(profile, f"apt-get install {' '.join(missing)} failed: {done.stderr.strip()[-200:]}")


def _ensure_binfmt(profile: Profile) -> None:
    """binfmt_misc mounted (a container often has it unmounted) and qemu-<arch> registered and enabled."""
    if not (_BINFMT / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(_BINFMT)], profile, "mounting binfmt_misc")
    handler = _BINFMT / f"qemu-{profile.qemu}"
    if not handler.exists() or not handler.read_text().startswith("enabled"):
        _run(["update-binfmts", "--enable", f"qemu-{profile.qemu}"], profile, f"update-binfmts qemu-{profile.qemu}")
    if not handler.exists() or not handler.read_text().startswith("enabled"):
        raise fail(profile, f"no binfmt handler {handler}: apt-get install qemu-user-static binfmt-support")


def _cache_dir() -> Path:
    return Path(os.environ.get("EDGELOOP_ROOTFS_CACHE", "/var/cache/edgeloop"))


def ensure_rootfs(profile: Profile) -> Path:
    """The cached rootfs for this profile: built by debootstrap when missing (arm64: 3 min on an idle machine, 11
    on a loaded one), then the profile's Debian packages apt-get installed in it when they are not there yet."""
    _ensure_tools(profile)
    _ensure_binfmt(profile)
    key = hashlib.sha256(f"{profile.arch} {SUITE} {' '.join(_PYTHON)}".encode()).hexdigest()[:12]
    root = _cache_dir() / f"rootfs-{profile.arch}-{key}"
    if (root / ".edgeloop-complete").exists():
        print(f"== rootfs {root} (cached)")
    else:
        _debootstrap(profile, root)
    _ensure_packages(profile, root)
    return root


def _debootstrap(profile: Profile, root: Path) -> None:
    building = root.with_name(root.name + ".building")
    if building.exists():  # an interrupted build
        _unmount_all(building)
        shutil.rmtree(building)
    building.parent.mkdir(parents=True, exist_ok=True)
    mirror = _mirror()
    print(f"== building rootfs {root} (debootstrap --arch={profile.arch} {SUITE} {mirror}; 3-20 min)")
    started = time.monotonic()
    command = ["debootstrap", f"--arch={profile.arch}", "--variant=minbase", f"--include={','.join(_PYTHON)}"]
    try:
        _run([*command, SUITE, str(building), mirror], profile, "debootstrap")
    finally:
        _unmount_all(building)  # debootstrap leaves its /proc mounted in a container
    (building / ".edgeloop-complete").write_text(f"{profile.arch} {SUITE} {' '.join(_PYTHON)}\n")
    building.rename(root)
    print(f"   built in {time.monotonic() - started:.0f} s")


def _ensure_packages(profile: Profile, root: Path) -> None:
    """apt-get install (in the rootfs) those of the profile's packages that are missing; idempotent."""
    query = chroot(root, "dpkg-query", "-W", "-f=${Status}\\n", *profile.packages)
    statuses = subprocess.run(query, capture_output=True, text=True).stdout.splitlines() if profile.packages else []
    if len(statuses) == len(profile.packages) and all(line.endswith(" installed") for line in statuses):
        return
    print(f"== apt-get install {' '.join(profile.packages)} (in the rootfs)")
    install = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq", "--no-install-recommends"]
    with mounted(root, profile):
        _run(chroot(root, "apt-get", "update", "-qq"), profile, "apt-get update in the rootfs")
        _run(chroot(root, *install, *profile.packages), profile, "apt-get install in the rootfs")
    subprocess.run(chroot(root, "apt-get", "clean"), check=False)


def _mount_points(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    lines = Path("/proc/mounts").read_text().splitlines()
    return [point for point in (line.split()[1] for line in lines) if point.startswith(prefix)]


def _unmount_all(root: Path) -> None:
    for point in sorted(_mount_points(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


@contextlib.contextmanager
def mounted(root: Path, profile: Profile) -> Iterator[None]:
    """/proc inside the rootfs for the duration (psutil reads it), unmounted afterwards; debootstrap made /dev."""
    _unmount_all(root)  # left over by a killed run
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    try:
        _run(["mount", "-t", "proc", "proc", str(root / "proc")], profile, "mounting /proc in the rootfs")
        yield
    finally:
        _unmount_all(root)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """One check at a time per rootfs (they share its work directory)."""
    with open(root.with_name(root.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def chroot(root: Path, *command: str) -> list[str]:
    """The argv that runs an ARM command inside the rootfs (qemu runs it through binfmt)."""
    return ["chroot", str(root), *command]

"""The agent's allocator setting (edge_agent/memory.py): glibc's mmap threshold fixed, the environment wins."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from edge_agent.memory import fix_mmap_threshold

# Run in a fresh interpreter: in a long-lived process (the test session) a large enough free chunk left in the
# heap by earlier work serves the block before glibc ever considers mmap, whatever the threshold.
_PROBE = textwrap.dedent(
    """
    import ctypes, sys
    from edge_agent.memory import MMAP_THRESHOLD, fix_mmap_threshold
    if sys.argv[1] == "fixed":
        assert fix_mmap_threshold() is True
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    heap = []
    # glibc marks an mmapped chunk with bit 1 (IS_MMAPPED) of its size field, just before the block
    for size in (8 * MMAP_THRESHOLD, 2 * MMAP_THRESHOLD):  # default glibc: heap after the first free
        for _ in range(2):
            block = libc.malloc(size)
            if not ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value & 2:
                heap.append(size)
            libc.free(block)
    print(heap)
    """
)


def _heap_blocks(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_fixed_threshold_keeps_large_blocks_out_of_the_heap() -> None:
    assert _heap_blocks("fixed") == "[]"
    # Without the setting glibc's dynamic threshold moves the later blocks into the heap: the test can fail.
    assert _heap_blocks("default") != "[]"


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert fix_mmap_threshold() is False

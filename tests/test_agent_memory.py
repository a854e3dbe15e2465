"""The agent's allocator setting (edge_agent/memory.py): glibc's mmap threshold fixed, the environment wins."""

from __future__ import annotations

import platform

import pytest

from edge_agent.memory import MMAP_THRESHOLD, fix_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_fixed_threshold_keeps_large_blocks_out_of_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert fix_mmap_threshold() is True
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.malloc_usable_size.restype, libc.malloc_usable_size.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    # glibc marks an mmapped chunk with bit 1 (IS_MMAPPED) of its size field, just before the block
    for size in (8 * MMAP_THRESHOLD, 2 * MMAP_THRESHOLD):  # default glibc: heap after the first free
        for _ in range(2):
            block = libc.malloc(size)
            header = ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value
            assert header & 2, f"a {size}-byte block came from the heap"
            libc.free(block)


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert fix_mmap_threshold() is False

"""Publishing an output atomically: build it under a hidden temporary name beside the final path, rename it
into place only when complete, and remove it on any failure. A reader never sees a half-written output under
the final name, and an existing output stays intact until the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson

from contracts.errors import InputError

__all__ = ["check_output", "staged_output", "write_json_atomic"]


def check_output(output: Path, input_path: Path) -> None:
    """Refuse outputs that would overwrite or land inside the input, or whose directory does not exist."""
    output, source = output.resolve(), input_path.resolve()
    if output == source:
        raise InputError(f"--output {output} is the input; choose another path")
    if source.is_dir() and source in output.parents:
        raise InputError(f"--output {output} is inside the input directory {source}; choose another path")
    if not output.parent.is_dir():
        raise InputError(f"directory {output.parent} of --output does not exist")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _publish(tmp: Path, final: Path) -> None:
    if final.is_dir() and not final.is_symlink():
        trash = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    elif tmp.is_dir() and final.exists():
        final.unlink()
        os.replace(tmp, final)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def staged_output(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path (nothing exists there yet); publish it as `final` on success."""
    final = final.resolve()
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise InputError(f"the job produced no output for {final}")
        _publish(tmp, final)
    finally:
        if tmp.exists():
            _remove(tmp)


def write_json_atomic(path: Path, document: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)

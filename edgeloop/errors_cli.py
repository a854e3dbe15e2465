"""Turn any error into one line on stderr and an exit code; never a traceback unless EDGELOOP_DEBUG=1."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from contracts.errors import EdgeloopError
from contracts.extras import missing_extra

__all__ = ["run_cli"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _command() -> str:
    """`edgeloop deploy` (the first word of argv that is not an option) for "... needs mlflow" messages."""
    words = [word for word in sys.argv[1:] if not word.startswith("-")]
    return f"`edgeloop {words[0]}`" if words else "`edgeloop`"


def run_cli(entry: Callable[[], object]) -> None:
    try:
        try:
            entry()
        except ModuleNotFoundError as exc:  # a command of a role whose extra is not installed
            missing = missing_extra(exc, _command())
            if missing is None:
                raise
            raise missing from None
    except EdgeloopError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("EDGELOOP_DEBUG"):
            traceback.print_exc()
        print(
            f"error: unexpected {type(exc).__name__}: {_first_line(exc)} "
            "(set EDGELOOP_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        sys.exit(1)

"""`python -m edge_agent` = `edgeloop agent` (same options, same settings, same --help).

A device starts it on every boot, so a well-formed list of flags is read by the light parser in
edgeloop/agent_args.py and the agent starts without importing Typer, Rich and Pygments; `--help` and any
argument list that parser does not take go to the Typer command (edgeloop/cmd_agent.py).
"""

from __future__ import annotations

import sys

from contracts.logs import configure_logging
from edgeloop.agent_args import parse_agent_args, serve
from edgeloop.errors_cli import run_cli

__all__ = ["main"]


def main() -> None:
    configure_logging()
    given = parse_agent_args(sys.argv[1:])
    if given is not None:
        run_cli(lambda: serve(given))
        return
    from edgeloop.cmd_agent import typer_app

    run_cli(typer_app("edge_agent"))


if __name__ == "__main__":
    main()

"""`python -m edge_agent` = `edgeloop agent` (same options, same settings)."""

from __future__ import annotations

import typer

from contracts.logs import configure_logging
from edgeloop.cmd_agent import register
from edgeloop.errors_cli import run_cli

app = typer.Typer(name="edge_agent", pretty_exceptions_enable=False, rich_markup_mode="rich", add_completion=False)
register(app)

if __name__ == "__main__":
    configure_logging()
    run_cli(app)

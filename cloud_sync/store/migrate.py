"""Migrating the cloud store with Alembic (cloud_sync/store/migrations): to the newest revision on every start
of `edgeloop cloud` (Store.create, inside the store's lock) and by `edgeloop cloud migrate`.

    upgrade(conn, schema)              run every revision the store lacks on `conn` (its transaction, its lock)
    revision_of(conn, schema)          the store's revision (None: empty, or made before Alembic)
    HEAD                               the newest revision this code knows
    offline_sql(url, from_revision)    the SQL of the revisions after `from_revision`, for a DBA to read or apply

A store made before Alembic (tables, no `alembic_version`) is at no revision: the baseline revision brings it
up to the baseline schema (cloud_sync/store/legacy.py) and the later revisions run as on any store. A store
whose revision this code does not know (made by a newer edgeloop) is refused in one line.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from contracts.errors import ConflictError, InputError

__all__ = ["HEAD", "offline_sql", "revision_of", "upgrade"]

MIGRATIONS = Path(__file__).parent / "migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def _head() -> str:
    head = _script().get_current_head()
    assert head is not None, f"no revision in {MIGRATIONS}"
    return head


HEAD = _head()


def revision_of(conn: Connection, schema: str | None = None) -> str | None:
    """The store's revision as `alembic_version` says (None: no revision yet)."""
    return MigrationContext.configure(conn, opts={"version_table_schema": schema}).get_current_revision()


def upgrade(conn: Connection, schema: str | None) -> tuple[str | None, str]:
    """Bring the store on `conn` to HEAD inside the caller's transaction; (revision before, HEAD)."""
    before = revision_of(conn, schema)
    if before is not None and before not in {script.revision for script in _script().walk_revisions()}:
        raise ConflictError(
            f"the store is at revision {before}, which this edgeloop does not know (its newest is {HEAD}): "
            "a newer edgeloop migrated it; upgrade edgeloop"
        )
    if before != HEAD:
        config = _config()
        config.attributes["connection"] = conn
        config.attributes["schema"] = schema
        command.upgrade(config, "head")
    return before, HEAD


def offline_sql(url: str, from_revision: str | None = None) -> str:
    """The SQL that takes a store at `from_revision` (None: an empty one) to HEAD, for the dialect of `url`."""
    known = [script.revision for script in _script().walk_revisions()]
    if from_revision is not None and from_revision not in known:
        raise InputError(f"--from {from_revision!r}: not a revision of this edgeloop ({', '.join(reversed(known))})")
    if from_revision == HEAD:
        return f"-- the store is at the newest revision {HEAD}: nothing to run\n"
    config = _config()
    buffer = io.StringIO()
    config.output_buffer = buffer
    config.attributes["url"] = url
    command.upgrade(config, f"{from_revision}:head" if from_revision else "head", sql=True)
    return buffer.getvalue()

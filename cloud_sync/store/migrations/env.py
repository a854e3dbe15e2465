"""Alembic's environment for the cloud store. migrate.py runs it on the connection it holds (online: inside the
store's lock and transaction, so a failed revision leaves the store as it was) or for a dialect only (offline:
`edgeloop cloud migrate --sql` prints the SQL). There is no alembic.ini: the configuration is built in code."""

from __future__ import annotations

from alembic import context

from cloud_sync.store.db import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    context.configure(url=config.attributes["url"], target_metadata=metadata, literal_binds=True)
else:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        version_table_schema=config.attributes.get("schema"),  # the inspector looks there, not through the map
    )
with context.begin_transaction():
    context.run_migrations()

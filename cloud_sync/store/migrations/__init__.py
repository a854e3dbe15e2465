"""Alembic migrations of the cloud store (SQLite and PostgreSQL), run by cloud_sync/store/migrate.py.

    env.py                       Alembic's environment: runs on the connection migrate.py holds (inside the lock)
    versions/r0001_baseline.py   the schema when Alembic took over; brings a store made before it up to that
    versions/rNNNN_*.py          one revision per later change of cloud_sync/store/db.py

Adding a column (docs/DEVELOPING.md): change the table in db.py, then add a revision here with the next number,
`down_revision` = the current head and `op.add_column(...)` in `upgrade()`; tests/test_cloud_store_alembic.py
fails while db.py and the migrated schema differ.
"""

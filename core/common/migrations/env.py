"""Alembic environment: runs one schema part's history on the engine handed over by
core.common.migrate.

It knows no part: the part (its metadata, its version table) comes in through
``config.attributes["schema"]``, so every service and extension owns its
revisions and only its own tables are compared with its models.
"""

from __future__ import annotations

from alembic import context

config = context.config
engine = config.attributes["engine"]
schema = config.attributes["schema"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=schema.metadata(),
        version_table=schema.version_table,
        render_as_batch=True,
        compare_type=True,
    )
    context.run_migrations()

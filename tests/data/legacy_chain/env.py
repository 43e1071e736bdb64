"""Alembic environment of the frozen shared chain (0001..0005) that every Haven database
was migrated with before each part owned its history. Tests use it to build databases
as the releases before the split left them; it compares nothing (no metadata)."""

from __future__ import annotations

from alembic import context

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=None, render_as_batch=True)
    context.run_migrations()

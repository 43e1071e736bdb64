"""Alembic environment: uses the engine handed over by core.common.migrate."""

from __future__ import annotations

from alembic import context

import core.common.auth
import core.identity.models  # noqa: F401 - registers the identity tables
from core.common.db import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,
        compare_type=True,
    )
    context.run_migrations()

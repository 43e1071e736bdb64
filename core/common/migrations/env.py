"""Alembic environment: uses the engine handed over by core.common.migrate.

Haven's services share one database, so there is one schema history; each
model module below registers its tables on the shared metadata.
"""

from __future__ import annotations

from alembic import context

import core.common.auth
import core.common.quota
import core.common.settings
import core.compute.models
import core.identity.models
import core.image.models
import core.network.models
import ha.evacuator.models
from core.common.db import Base

MODEL_MODULES = (
    core.common.auth,
    core.common.quota,
    core.compute.models,
    core.identity.models,
    core.image.models,
    core.network.models,
    ha.evacuator.models,
)

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

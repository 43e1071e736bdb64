"""The cloud's schema parts, in the order they are migrated (the shared plumbing first).

Each part owns its tables and history (``<part>/migrations``); a deployment adds
its own parts through core.common.extensions.Extensions.schemas.
"""

from __future__ import annotations

from core.common.migrate import Schema
from core.common.migrations import SCHEMA as COMMON
from core.compute.migrations import SCHEMA as COMPUTE
from core.identity.migrations import SCHEMA as IDENTITY
from core.image.migrations import SCHEMA as IMAGE
from core.network.migrations import SCHEMA as NETWORK

CORE_SCHEMAS: tuple[Schema, ...] = (COMMON, IDENTITY, COMPUTE, IMAGE, NETWORK)

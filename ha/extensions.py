"""What the HA deployment adds to the cloud (core.common.extensions.Extensions).

The ``haven`` command (ha.cli) hands these to the cloud's commands, so every
compute API it serves -- ``haven serve compute`` on cluster nodes (what the
OCF service agents start), the all-in-one -- carries the evacuation records
API, and ``haven db upgrade``/``haven bootstrap`` migrate the evacuator's tables
after the cloud's own.
"""

from __future__ import annotations

import bottle

from core.common.config import HavenConfig
from core.common.extensions import Extensions
from core.common.migrate import Schema
from core.schemas import CORE_SCHEMAS
from ha.evacuator.migrations import SCHEMA as EVACUATOR_SCHEMA


def mount_evacuation_records(app: bottle.Bottle, cfg: HavenConfig) -> None:
    """``/v2.1/os-evacuations`` on the compute API (imported only when an app is built)."""
    from ha.evacuator.routes import mount

    mount(app, cfg)


HA_EXTENSIONS = Extensions(compute_api=(mount_evacuation_records,),
                           schemas=(EVACUATOR_SCHEMA,))

# Every part of an HA deployment's database, in upgrade order.
HA_SCHEMAS: tuple[Schema, ...] = (*CORE_SCHEMAS, *HA_EXTENSIONS.schemas)

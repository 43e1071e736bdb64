"""Extension points: how a deployment adds its own parts to the cloud's services.

The cloud (``core``) knows nothing of what is built on it. A deployment that
adds parts -- the HA cluster adds the evacuation controller's records API and
its tables -- hands an :class:`Extensions` to the composition code (the CLI,
the all-in-one), which passes each piece to where it plugs in:

* ``compute_api``: callables ``(app, cfg)`` that mount extra routes on the
  compute API's app after its own (they may register policy rules too);
* ``schemas``: schema parts (:class:`core.common.migrate.Schema`) migrated after
  the cloud's own, each with its own history.

The HA deployment's set is ``ha.extensions.HA_EXTENSIONS`` (used by the ``haven``
command); a bare cloud runs with ``Extensions()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import bottle

from core.common.config import HavenConfig
from core.common.migrate import Schema

ComputeApiExtension = Callable[[bottle.Bottle, HavenConfig], None]


@dataclass(frozen=True)
class Extensions:
    """What a deployment adds to the cloud (nothing, by default)."""

    compute_api: tuple[ComputeApiExtension, ...] = ()
    schemas: tuple[Schema, ...] = ()


NO_EXTENSIONS = Extensions()

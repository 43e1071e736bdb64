"""The network API's entry points, kept where their callers import them from.

The service is built by :mod:`core.network.app` (the app factory) from one module per
resource (:mod:`core.network.networks`, :mod:`core.network.subnets`,
:mod:`core.network.ports`).
"""

from __future__ import annotations

from core.network.app import create_app
from core.network.networks import create_network_row
from core.network.subnets import create_subnet_row

__all__ = ["create_app", "create_network_row", "create_subnet_row"]

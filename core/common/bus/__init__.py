"""The message bus: nudges and RPC between Haven's processes (see base.py)."""

from core.common.bus.base import Bus, BusError, BusTimeout, Handler, Subscription, make_bus

__all__ = ["Bus", "BusError", "BusTimeout", "Handler", "Subscription", "make_bus"]

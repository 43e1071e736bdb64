"""The bus interface: casts (nudges) and calls (RPC) on named topics.

What the bus is for in Haven: the database is the source of truth, and the bus
only carries nudges ("look at instance X") and short RPCs. Every consumer also
reconciles from the database on a period, so a lost or duplicated message
delays work and never loses or doubles it. Still, the AMQP bus does its part:
a cast returns only once the broker has confirmed it (publisher confirms, on a
durable quorum queue), and a message is acknowledged only after its handler
finished, so a consumer crash redelivers it (handlers are idempotent).

Two implementations: ``local`` (in-process, the all-in-one) and ``amqp``
(pika to a RabbitMQ cluster, failing over across the configured brokers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

Message = dict[str, Any]
Handler = Callable[[Message], Message | None]


class BusError(Exception):
    """The bus could not do what was asked (no broker reachable, message refused)."""


class BusTimeout(BusError):
    """A call got no reply in time."""


class Subscription(Protocol):
    def stop(self) -> None:
        """Stop consuming; messages not yet handled stay queued for the next consumer."""


class Bus(Protocol):
    def cast(self, topic: str, message: Message) -> None:
        """Queue ``message`` for ``topic``'s consumer; return once it is safely queued."""

    def call(self, topic: str, message: Message, timeout: float = 30.0) -> Message:
        """Send ``message`` to ``topic`` and wait for the handler's reply (BusTimeout)."""

    def subscribe(self, topic: str, handler: Handler) -> Subscription:
        """Consume ``topic``: ``handler`` gets each message; its return value is the
        reply to a call (ignored for casts). An exception in the handler is logged
        and, for a call, returned to the caller as a BusError."""

    def ping(self) -> None:
        """Raise BusError unless the bus is usable (for /healthcheck)."""

    def close(self) -> None:
        """Stop every subscription and release connections."""


def make_bus(driver: str, urls: list[str] | None = None, name: str = "haven",
             ca_file: str | None = None) -> Bus:
    """The bus the configuration asks for; ``amqps://`` brokers are verified against
    ``ca_file`` (the cluster CA; None: the system's CAs)."""
    if driver == "local":
        from core.common.bus.local import LocalBus

        return LocalBus()
    if driver == "amqp":
        from core.common.bus.amqp import AmqpBus

        if not urls:
            raise BusError("bus.urls: the amqp driver needs at least one broker URL")
        return AmqpBus(urls, name=name, ca_file=ca_file)
    raise BusError(f"unknown bus driver {driver!r}")

"""The messages between the compute API and the compute agents, on the bus.

One module both sides import (the API sends, :mod:`core.compute.agent` consumes), so
a message's shape is written once: the API never builds a dict the agent does not
read, and a field renamed here is renamed for both.

Two messages go to a host's topic (:func:`topic`):

* :class:`Nudge` (a cast, no answer): "look at this instance now". It carries no
  order: the database says what the instance should be and the agent converges
  to it, so a lost nudge only delays the work until the next reconciliation, and
  a duplicate one is harmless.
* :class:`ConsoleLogRequest` (a call): the tail of the instance's console log,
  answered with :class:`ConsoleLogReply`.

The wire format (plain JSON objects) is what it was before this module, so agents and
API processes of one release apart still understand each other during an upgrade.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.common.bus import Bus, BusError
from core.common.bus.base import Message

LOG = logging.getLogger(__name__)

CONSOLE_LOG = "console_log"  # the ``method`` of a console log request
CONSOLE_TIMEOUT = 15.0  # seconds the API waits for an agent's console answer


def topic(host: str) -> str:
    """The bus topic the agent of ``host`` listens on."""
    return f"compute.{host}"


@dataclass(frozen=True)
class Nudge:
    """Converge instance ``instance_id`` now (it changed in the database)."""

    instance_id: str

    def to_wire(self) -> Message:
        return {"instance": self.instance_id}


@dataclass(frozen=True)
class ConsoleLogRequest:
    """The last ``length`` lines (all if None) of an instance's console log."""

    instance_id: str
    length: int | None = None

    def to_wire(self) -> Message:
        return {"method": CONSOLE_LOG, "instance": self.instance_id, "length": self.length}


@dataclass(frozen=True)
class ConsoleLogReply:
    output: str

    def to_wire(self) -> Message:
        return {"output": self.output}

    @classmethod
    def from_wire(cls, message: Message | None) -> ConsoleLogReply:
        output = (message or {}).get("output", "")
        return cls(output if isinstance(output, str) else "")


AgentMessage = Nudge | ConsoleLogRequest


def parse(message: Message) -> AgentMessage | None:
    """What an incoming message asks of the agent; None for one it does not understand
    (logged and dropped: a message is never a reason for the agent to fail)."""
    instance_id = message.get("instance")
    if not isinstance(instance_id, str) or not instance_id:
        LOG.warning("dropping a bus message without an instance: %r", message)
        return None
    method = message.get("method")
    if method == CONSOLE_LOG:
        length = message.get("length")
        return ConsoleLogRequest(instance_id, length if isinstance(length, int) else None)
    if method is None:
        return Nudge(instance_id)
    LOG.warning("dropping a bus message with an unknown method: %r", message)
    return None


# ---- the API's side ------------------------------------------------------------------
def nudge(bus: Bus, host: str | None, instance_id: str) -> None:
    """Tell ``host``'s agent to look at the instance. A failure is only logged: the
    agent's periodic reconciliation finds the work anyway."""
    if not host:
        return
    try:
        bus.cast(topic(host), Nudge(instance_id).to_wire())
    except BusError as exc:
        LOG.warning("could not nudge %s about %s (reconcile will): %s", host, instance_id, exc)


def console_log(bus: Bus, host: str, instance_id: str, length: int | None) -> ConsoleLogReply:
    """Ask ``host``'s agent for the console log; raises BusError when it does not answer."""
    reply = bus.call(topic(host), ConsoleLogRequest(instance_id, length).to_wire(),
                     timeout=CONSOLE_TIMEOUT)
    return ConsoleLogReply.from_wire(reply)

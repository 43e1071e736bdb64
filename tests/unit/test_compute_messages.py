"""The compute API's messages to the agents: what the API sends is what the agent
reads (one module, core/compute/messages.py), over a real in-process bus."""

from __future__ import annotations

from core.common.bus import make_bus
from core.common.bus.base import Message
from core.compute import messages


def test_what_the_api_sends_the_agent_reads() -> None:
    assert messages.parse(messages.Nudge("i-1").to_wire()) == messages.Nudge("i-1")
    request = messages.ConsoleLogRequest("i-2", 10)
    assert messages.parse(request.to_wire()) == request
    assert messages.parse(messages.ConsoleLogRequest("i-3").to_wire()) == (
        messages.ConsoleLogRequest("i-3", None))


def test_messages_the_agent_cannot_act_on_are_dropped() -> None:
    assert messages.parse({}) is None
    assert messages.parse({"instance": 7}) is None
    assert messages.parse({"instance": "i-1", "method": "reformat_disk"}) is None
    assert messages.parse({"method": "console_log", "instance": "i", "length": "x"}) == (
        messages.ConsoleLogRequest("i", None))


def test_nudge_and_console_log_over_the_bus() -> None:
    bus = make_bus("local")
    got: list[messages.AgentMessage] = []

    def agent(message: Message) -> Message | None:
        request = messages.parse(message)
        assert request is not None
        got.append(request)
        if isinstance(request, messages.ConsoleLogRequest):
            return messages.ConsoleLogReply(f"log of {request.instance_id}").to_wire()
        return None

    subscription = bus.subscribe(messages.topic("h1"), agent)
    try:
        messages.nudge(bus, "h1", "i-1")
        messages.nudge(bus, None, "i-unplaced")  # no host: nothing to tell
        # one queue per topic, one consumer: the call is answered after the cast
        reply = messages.console_log(bus, "h1", "i-2", 5)
        assert reply == messages.ConsoleLogReply("log of i-2")
        assert got == [messages.Nudge("i-1"), messages.ConsoleLogRequest("i-2", 5)]
    finally:
        subscription.stop()
        bus.close()

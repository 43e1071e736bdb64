"""The all-in-one's network API nudges only its own host's agent on its local bus
(core/network/localnet.py): a nudge for any other host would wait on the bus for
ever, nobody there consuming it. A real LocalBus; the order of a topic's messages
(one worker per topic, in order) says what was queued before the probe."""

from __future__ import annotations

import threading
from collections.abc import Callable

from core.common.bus.base import Message
from core.common.bus.local import LocalBus
from core.common.config import load_config
from core.network.agent_nudges import topic
from core.network.localnet import nudger

PROBE = "probe"


def test_the_all_in_one_nudges_its_own_agent_and_queues_nothing_for_other_hosts() -> None:
    cfg = load_config(None, {"compute.host": "aio"})
    bus = LocalBus()
    heard: dict[str, list[Message]] = {"aio": [], "elsewhere": []}
    lock = threading.Lock()

    def consumer(host: str) -> Callable[[Message], Message]:
        def handle(message: Message) -> Message:
            with lock:
                heard[host].append(message)
            return {}
        return handle

    try:
        nudges = nudger(cfg, bus)
        nudges.nudge(["aio", "elsewhere"])
        assert nudges.wait_idle(60)
        # subscribed only now: whatever was cast to a topic waits for its consumer
        for host in heard:
            bus.subscribe(topic(host), consumer(host))
            bus.call(topic(host), {PROBE: True}, timeout=60)
        with lock:
            assert heard["aio"] == [{"host": "aio"}, {PROBE: True}]
            assert heard["elsewhere"] == [{PROBE: True}]  # nothing was queued for it
    finally:
        bus.close()

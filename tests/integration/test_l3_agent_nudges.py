"""A shard that starts on a node binds its routers' ports there, and then nudges the
network agents those ports concern on the real bus (RabbitMQ), as the network API
does after a binding change: the new node's agent makes the routers' bridges at once
instead of at its next periodic round.

The agent runs as Pacemaker runs it, in the node namespace of test_l3_agent's
fixture; each host's agent is a consumer of that host's topic here, counting what
it hears. Whether every nudge sent has arrived is known without waiting on time: a
call on a topic is answered only after every cast queued on it before. The node's
namespace reaches the test's broker through two relays joined by a Unix socket
(stream_relay.py): nothing is added to the host's own namespace.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.common.bus.amqp import AmqpBus
from core.common.bus.base import Message
from core.network.agent_nudges import topic
from core.network.routerns import netns
from tests.integration.test_l3_agent import Node, node  # noqa: F401 (the fixture)
from tests.integration.test_routers_api import Net, ok, tenant
from tests.rabbitmq import RabbitMQ

pytestmark = pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
PROBE = "probe"


class Heard:
    """A consumer per host on the bus, as each host's network agent subscribes."""

    def __init__(self, bus: AmqpBus, hosts: list[str]) -> None:
        self.bus, self.hosts = bus, hosts
        self.got: list[str] = []
        self.lock = threading.Lock()
        for host in hosts:
            sub = bus.subscribe(topic(host), self.consumer(host))
            assert sub.wait_consuming(60)  # type: ignore[attr-defined]

    def consumer(self, host: str) -> Any:
        def handle(message: Message) -> Message:
            if not message.get(PROBE):
                assert message == {"host": host}, message
                with self.lock:
                    self.got.append(host)
            return {}
        return handle

    def nudged(self) -> set[str]:
        """The hosts nudged since the last look (all of them: see the module's text)."""
        for host in self.hosts:
            self.bus.call(topic(host), {PROBE: True}, timeout=60)
        with self.lock:
            got, self.got = set(self.got), []
        return got


@pytest.fixture
def bus(rabbitmq: RabbitMQ) -> Iterator[AmqpBus]:
    listening = AmqpBus([rabbitmq.url], name="test-agents")
    yield listening
    listening.close()


RELAY = Path(__file__).with_name("stream_relay.py")


@pytest.fixture
def bus_config(node: Node, rabbitmq: RabbitMQ, tmp_path: Path  # noqa: F811
               ) -> Iterator[str]:
    """The node's config plus the bus its network agents listen on, the broker reached
    from inside the node at the same loopback address and port as from the host."""
    sock = tmp_path / "amqp.sock"
    broker = f"127.0.0.1:{rabbitmq.amqp_port}"
    netns.run(["ip", "-n", node.node, "link", "set", "lo", "up"])
    relays = []
    try:
        for argv in ([sys.executable, str(RELAY), f"unix:{sock}", f"tcp:{broker}"],
                     node.in_node(sys.executable, str(RELAY), f"tcp:{broker}",
                                  f"unix:{sock}")):
            relay = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            relays.append(relay)
            assert relay.stdout is not None and relay.stdout.readline().strip() == "ready"
        cfg = yaml.safe_load(node.config.read_text())
        cfg["bus"] = {"driver": "amqp", "urls": [rabbitmq.url]}
        path = tmp_path / "haven-bus.yaml"
        path.write_text(yaml.safe_dump(cfg))
        yield str(path)
    finally:
        for relay in relays:
            relay.kill()
            relay.wait()


def test_a_shard_moving_here_nudges_the_agents_of_its_routers_ports(
        node: Node, bus: AmqpBus, bus_config: str) -> None:  # noqa: F811
    services = node.alice.services
    admin = Net(services)
    ports = ok(admin("GET", f"/v2.0/ports?device_id={node.router_id}"))["ports"]
    [iface] = [p for p in ports if p["device_owner"] == "network:router_interface"]
    tenant_net = ok(admin("GET", f"/v2.0/networks/{iface['network_id']}"))["network"]
    assert tenant_net["provider:network_type"] == "vxlan"
    old, peer, far = (f"{n}-{node.tag}" for n in ("l3old", "hvpeer", "hvfar"))
    # the shard ran on another node: the router's ports are bound there
    for port in ports:
        ok(admin("PUT", f"/v2.0/ports/{port['id']}", {"port": {"binding:host_id": old}}))
    # a VM on the router's tenant network on another hypervisor (a VXLAN peer: its
    # forwarding entries say where the router's MACs are), and one that has nothing
    # to do with the router
    ok(admin("POST", "/v2.0/ports", {"port": {"network_id": tenant_net["id"],
                                              "binding:host_id": peer}}), 201)
    bob = tenant(services, f"far{node.tag}")
    far_net, _ = bob.network("far", "10.9.0.0/24")
    far_port = bob.port(far_net)
    ok(admin("PUT", f"/v2.0/ports/{far_port['id']}", {"port": {"binding:host_id": far}}))
    heard = Heard(bus, [node.host, old, peer, far])
    assert heard.nudged() == set()
    config = bus_config

    started = node.run("start", config=config)
    assert started.returncode == 0, started.stderr
    moved = ok(admin("GET", f"/v2.0/ports?device_id={node.router_id}"))["ports"]
    assert {p["binding:host_id"] for p in moved} == {node.host}
    # this node's agent (it makes the bridges), the old node's (it lets them go), the
    # peer's (its forwarding entries): not the hypervisor with nothing of the router's
    assert heard.nudged() == {node.host, old, peer}

    # nothing moved since: a monitor nudges nobody
    assert node.run("monitor", 5000, config=config).returncode == 0
    assert heard.nudged() == set()
    assert node.run("stop", config=config).returncode == 0

"""A security group rule reaches a running VM's filter at the agent round its nudge
starts, not an interval later: the network API (its nudger on a real RabbitMQ) and
a real network agent loop on a "hypervisor" (a network namespace this test makes),
subscribed to its host's topic as ``haven network-agent`` is.

The agent's interval is an hour, longer than the test: after its first round, only
a nudge can start another. The test counts rounds and reads the nft ruleset loaded
in the hypervisor's namespace; it never times anything (the waits are bounds for a
loaded machine, each passed as soon as the round is done).

The port is made and bound through the plain network API (no nudger), so the rule's
are the only nudges on the bus: a round after the first can only be theirs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.common.bus.amqp import AmqpBus
from core.network.agent.agent import NetworkAgent, RoundResult
from core.network.agent.iproute import IpRoute2, LinuxBridgeDriver
from core.network.agent.linuxbridge import HostConfig
from core.network.agent_nudges import Nudger, topic
from tests.conftest import Services
from tests.integration.test_agent_nudges import network_api_with
from tests.integration.test_network_agent_netns import Hosts, api, sh
from tests.rabbitmq import RabbitMQ

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"),
                       reason="needs root, iproute2 and nftables"),
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
]

HOST = "hv1"
VTEP = "172.30.0.1"
INTERVAL = 3600.0  # longer than the test: only a nudge starts a second round
ROUND_BOUND = 120.0  # how long a round may take on a loaded machine (never measured)
RULE_PORT = 32123


class CountedAgent(NetworkAgent):
    """The real agent, its rounds counted as they finish (its loop, nudges and
    interval untouched)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rounds = 0
        self.results: list[RoundResult] = []
        self._done = threading.Condition()

    def converge(self) -> RoundResult:
        try:
            result = super().converge()
            self.results.append(result)
            return result
        finally:
            with self._done:
                self.rounds += 1
                self._done.notify_all()

    def wait_rounds(self, count: int) -> bool:
        with self._done:
            return self._done.wait_for(lambda: self.rounds >= count, ROUND_BOUND)


@pytest.fixture
def hypervisor(services: Services) -> Iterator[Hosts]:
    """One hypervisor namespace (its VTEP address on a veth of its own as underlay)."""
    state = Path(tempfile.mkdtemp(prefix="haven-t-nudge-"))
    state.chmod(0o755)  # dnsmasq, once it has dropped root, reads below it
    made = Hosts(services, state)
    try:
        ns = made.ns[HOST] = made.add_ns(HOST)
        sh("ip", "-n", ns, "link", "add", "und", "type", "veth", "peer", "name", "und-peer")
        sh("ip", "-n", ns, "addr", "add", f"{VTEP}/24", "dev", "und")
        for device in ("und", "und-peer"):
            sh("ip", "-n", ns, "link", "set", device, "up")
        yield made
    finally:
        made.remove_all()
        shutil.rmtree(state, ignore_errors=True)


def test_a_rule_made_through_the_api_is_loaded_at_the_round_its_nudge_starts(
        hypervisor: Hosts, services: Services, rabbitmq: RabbitMQ) -> None:
    token = services.member("p-nudge", "u-nudge")
    net = api(services, "POST", "/v2.0/networks", {"network": {"name": "n"}}, token,
              201)["network"]
    api(services, "POST", "/v2.0/subnets", {"subnet": {
        "network_id": net["id"], "cidr": "10.45.0.0/24", "ip_version": 4}}, token, 201)
    group = api(services, "POST", "/v2.0/security-groups", {"security_group": {
        "name": "web"}}, token, 201)["security_group"]
    port = api(services, "POST", "/v2.0/ports", {"port": {
        "network_id": net["id"], "device_owner": "compute:nova",
        "security_groups": [group["id"]]}}, token, 201)["port"]
    api(services, "PUT", f"/v2.0/ports/{port['id']}", {"port": {"binding:host_id": HOST}})
    hypervisor.guest(HOST, port)  # its tap, as QEMU's

    ns = hypervisor.ns[HOST]
    agent = hypervisor.agents[HOST] = CountedAgent(
        services.db, HOST, VTEP, LinuxBridgeDriver(HostConfig(VTEP), IpRoute2(ns)),
        hypervisor.state / HOST, host_netns=ns,
        namespace_of=lambda net_id: hypervisor.service_ns(HOST, net_id))
    prefix = f"test-{uuid.uuid4().hex[:8]}"  # this test's queues only
    agent_bus = AmqpBus([rabbitmq.url], name=f"network-{HOST}", prefix=prefix)
    api_bus = AmqpBus([rabbitmq.url], name="network-api", prefix=prefix)
    loop = threading.Thread(target=agent.run, args=(INTERVAL,), daemon=True)
    try:
        # as `haven network-agent` listens: a message only wakes the loop
        subscription = agent_bus.subscribe(topic(HOST), lambda _message: agent.nudge())
        assert subscription.wait_consuming(60)
        loop.start()
        assert agent.wait_rounds(1)
        shown = api(services, "GET", f"/v2.0/ports/{port['id']}")["port"]
        assert shown["status"] == "ACTIVE"  # plugged and filtered: the VM runs
        assert agent.results[0].filter_error is None
        assert str(RULE_PORT) not in agent.applier.ruleset()

        with network_api_with(services, Nudger(api_bus)) as nudging:
            assert agent.rounds == 1  # asleep for the interval: nothing else woke it
            rule = api(nudging, "POST", "/v2.0/security-group-rules", {"security_group_rule": {
                "security_group_id": group["id"], "direction": "ingress", "ethertype": "IPv4",
                "protocol": "tcp", "port_range_min": RULE_PORT, "port_range_max": RULE_PORT}},
                token, 201)["security_group_rule"]
            assert agent.wait_rounds(2), "the agent slept through the new rule: not nudged"
            assert agent.results[1].filter_error is None
            assert f"dport {RULE_PORT}" in agent.applier.ruleset()

            api(nudging, "DELETE", f"/v2.0/security-group-rules/{rule['id']}", token=token,
                status=204)
            assert agent.wait_rounds(3), "the agent slept through the deletion: not nudged"
            assert str(RULE_PORT) not in agent.applier.ruleset()
    finally:
        agent.stop()
        loop.join(timeout=ROUND_BOUND)
        agent_bus.close()
        api_bus.close()

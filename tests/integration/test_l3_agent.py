"""ocf:haven:haven-l3 for real: ``ocf-tester``, and the shard's life, on a router made
through the network API.

The agent runs as Pacemaker runs it (a wrapper like appliance/setup.sh's, parameters
in OCF_RESKEY_*), but inside a network namespace this test makes ("the node", entered
with ``nsenter --net`` so the router namespaces the agent adds are ordinary named
namespaces), never the host's: the node holds the bridges ``brq<network>`` of the
external and the tenant network, an "outside" namespace on the external one and a
"guest" namespace at the VM port's address on the tenant one. The router namespaces
carry a prefix of this test's own (``namespace_prefix``). The database is a real one
(MariaDB, tests/conftest.py) that the network API writes and the agent reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from core.network.agent.linuxbridge import bridge_name
from core.network.routerns import netns
from core.network.routerns.shards import shard_of
from tests.conftest import Services
from tests.integration.test_router_dataplane import CLIENT, SERVER, neighbour_mac, plug
from tests.integration.test_routers_api import Net, ok, public, tenant

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 3
OCF_ROOT = "/usr/lib/ocf"

pytestmark = pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)


@dataclass
class Node:
    """The test's node namespace, the agent's wrapper and its parameters."""

    tag: str
    node: str
    outside: str
    guest: str
    wrapper: Path
    config: Path
    state_dir: Path
    prefix: str
    shard: int
    router_id: str
    fip: str
    alice: Net
    tenant_bridge: str
    host: str  # the node's name, as its network agent knows it (compute.host)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def params(self, **over: str) -> dict[str, str]:
        values = {"config": str(self.config), "shard": str(self.shard), "shards": str(SHARDS),
                  "state_dir": str(self.state_dir), "namespace_prefix": self.prefix}
        values.update(over)
        return values

    def in_node(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.node}", "--", *argv]

    def run(self, action: str, interval_ms: int = 0, **over: str
            ) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ["PATH"], "OCF_ROOT": OCF_ROOT,
               "OCF_RESOURCE_INSTANCE": f"haven-l3-{self.shard}",
               "OCF_RESKEY_CRM_meta_interval": str(interval_ms)}
        env.update({f"OCF_RESKEY_{k}": v for k, v in self.params(**over).items()})
        return subprocess.run(self.in_node(str(self.wrapper), action), env=env,
                              capture_output=True, text=True, timeout=300)

    def ours(self) -> set[str]:
        return {ns for ns in netns.namespaces() if ns.startswith(self.prefix)}

    def router_ns(self, router_id: str | None = None) -> str:
        return self.prefix + (router_id or self.router_id)

    def connect(self, address: str, port: int) -> str:
        return netns.run(netns.in_ns(self.outside, sys.executable, "-c", CLIENT, address,
                                     str(port))).strip()


def router_in_shard(alice: Net, shard: int, pub: str | None = None,
                    subnet: str | None = None) -> dict[str, object]:
    """A router of ``alice`` whose id falls into ``shard`` (the others are deleted)."""
    for i in range(60):
        router = alice.router(f"r{i}")
        if shard_of(router["id"], SHARDS) == shard:
            if pub is not None:
                ok(alice("PUT", f"/v2.0/routers/{router['id']}", {"router": {
                    "external_gateway_info": {"network_id": pub}}}))
            if subnet is not None:
                ok(alice("PUT", f"/v2.0/routers/{router['id']}/add_router_interface",
                         {"subnet_id": subnet}))
            return router
        assert alice("DELETE", f"/v2.0/routers/{router['id']}").status_code == 204
    raise AssertionError("60 routers and none in the shard")


@pytest.fixture
def node(services: Services, tmp_path: Path) -> Iterator[Node]:
    tag = uuid.uuid4().hex[:6]
    made = [f"haven-t-{tag}-{n}" for n in ("node", "out", "gst")]
    pub, _ = public(services)
    alice = tenant(services, f"l3ha{tag}")
    net, sub = alice.network("net1", "10.0.0.0/24")
    assert sub is not None
    shard = 1
    router = router_in_shard(alice, shard, pub, sub)
    vm = alice.port(net)
    fip = ok(alice.fip(pub), 201)["floatingip"]
    fip = ok(alice("PUT", f"/v2.0/floatingips/{fip['id']}",
                   {"floatingip": {"port_id": vm["id"]}}))["floatingip"]
    config = tmp_path / "haven.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                      "log": {"level": "WARNING"},
                                      "compute": {"host": f"l3node-{tag}"},
                                      "database": {"url": services.cfg.database_url}}))
    # ocf-tester runs the agent as nobody too: a directory nobody may enter
    wrapper_dir = Path(tempfile.mkdtemp(prefix="haven-t-l3-"))
    wrapper_dir.chmod(0o755)
    wrapper = wrapper_dir / "haven-l3"
    # appliance/setup.sh's wrapper, with this checkout first on the path (the venv's
    # haven may be installed from another one)
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" '
                       f'"{ROOT}/agents/ocf/haven-l3" "$@"\n')
    wrapper.chmod(0o755)
    n = Node(tag, *made, wrapper=wrapper, config=config, state_dir=tmp_path / "run",
             prefix=f"haven-t-{tag}-q", shard=shard, router_id=str(router["id"]),
             fip=fip["floating_ip_address"], alice=alice,
             tenant_bridge=bridge_name(net), host=f"l3node-{tag}")
    try:
        for ns in made:
            netns.run(["ip", "netns", "add", ns])
        for bridge in (bridge_name(pub), bridge_name(net)):
            netns.run(["ip", "-n", n.node, "link", "add", bridge, "type", "bridge"])
            netns.run(["ip", "-n", n.node, "link", "set", bridge, "up"])
        plug(n.node, n.outside, "o-peer", bridge_name(pub), "fa:16:3e:00:00:99",
             "203.0.113.1/24")
        plug(n.node, n.guest, "g-peer", bridge_name(net), vm["mac_address"],
             f"{vm['fixed_ips'][0]['ip_address']}/24")
        netns.run(["ip", "-n", n.guest, "route", "add", "default", "via", "10.0.0.1"])
        # the outside learns new owners from gratuitous ARP (to see the start announce)
        netns.run(netns.in_ns(n.outside, "sysctl", "-q", "-w",
                              "net.ipv4.conf.eth0.arp_accept=1"))
        proc = subprocess.Popen(netns.in_ns(n.guest, sys.executable, "-c", SERVER, "8080"),
                                stdout=subprocess.PIPE, text=True)
        n.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield n
    finally:
        for proc in n.servers:
            proc.kill()
            proc.wait()
        for ns in sorted(n.ours()):
            netns.remove(ns)
        for ns in made:
            netns.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(wrapper_dir, ignore_errors=True)


def test_ocf_tester_passes(node: Node) -> None:
    argv = ["ocf-tester", "-n", f"haven-l3-{node.shard}"]
    for key, value in node.params().items():
        argv += ["-o", f"{key}={value}"]
    result = subprocess.run(node.in_node(*argv, str(node.wrapper)), capture_output=True,
                            text=True, timeout=900, env={**os.environ, "OCF_ROOT": OCF_ROOT})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed all tests" in result.stdout
    assert node.ours() == set()  # its last action was a stop


def test_a_shard_lives_start_reconcile_fail_stop(node: Node) -> None:
    assert node.run("monitor").returncode == 7  # probe: not here
    assert node.run("stop").returncode == 0  # stop of a never-started shard
    started = node.run("start")
    assert started.returncode == 0, started.stderr
    assert node.ours() == {node.router_ns()}
    # announced at start (a failover's new node): the outside knows the floating IP's
    # MAC before it sent a single packet to it
    admin = Net(node.alice.services)
    [gw_port] = ok(admin("GET", f"/v2.0/ports?device_id={node.router_id}"
                                f"&device_owner=network:router_gateway"))["ports"]
    assert neighbour_mac(node.outside, node.fip) == gw_port["mac_address"]
    seen = node.connect(node.fip, 8080)
    assert seen == "203.0.113.1", seen  # the outside reaches the guest at its floating IP
    # the router's ports are bound to this node (its network agent carries their
    # networks; the other hosts tunnel the router's MACs here)
    ports = ok(admin("GET", f"/v2.0/ports?device_id={node.router_id}"))["ports"]
    assert len(ports) == 2
    assert {p["binding:host_id"] for p in ports} == {node.host}

    # a router created through the API in this shard appears at the next monitor,
    # one in another shard does not; deleted, its namespace goes
    other = router_in_shard(node.alice, node.shard)
    elsewhere = router_in_shard(node.alice, (node.shard + 1) % SHARDS)
    assert node.run("monitor", 5000).returncode == 0
    assert node.ours() == {node.router_ns(), node.router_ns(str(other["id"]))}
    assert node.alice("DELETE", f"/v2.0/routers/{other['id']}").status_code == 204
    assert node.run("monitor", 5000).returncode == 0
    assert node.ours() == {node.router_ns()}
    assert node.router_ns(str(elsewhere["id"])) not in node.ours()

    # drift is converged back by the monitor (an address taken away)
    gw = next(d for d in netns.links(node.router_ns()) if d.startswith("qg-"))
    netns.ip(node.router_ns(), "addr", "flush", "dev", gw)
    assert node.run("monitor", 5000).returncode == 0
    assert node.connect(node.fip, 8080) == "203.0.113.1"

    # a router whose bridge is gone waits for the network agent to make it again
    # (bridge_wait seconds, 60 by default), then fails the monitor
    netns.ip(node.node, "link", "del", node.tenant_bridge)
    waiting = node.run("monitor", 5000)
    assert waiting.returncode == 0, waiting.stderr
    assert (node.state_dir / f"haven-l3-{node.shard}.l3-held.waiting").exists()  # since when
    failed = node.run("monitor", 5000, bridge_wait="0")
    assert failed.returncode == 1, failed.stderr
    assert (f"ocf-exit-reason:monitor: router {node.router_id}: bridge {node.tenant_bridge} "
            "does not exist for") in failed.stderr
    # ...and a node that has a bridge but cannot plug into it as planned fails at once
    netns.ip(node.node, "link", "add", node.tenant_bridge, "type", "veth", "peer", "name",
             f"p{node.tag}")  # there, but no bridge
    failed = node.run("monitor", 5000)
    assert failed.returncode == 1, failed.stderr
    assert f"ocf-exit-reason:monitor: router {node.router_id} not as planned" in failed.stderr
    netns.ip(node.node, "link", "del", node.tenant_bridge)

    stopped = node.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert node.ours() == set()
    assert node.run("monitor", 5000).returncode == 7
    assert node.run("stop").returncode == 0


def test_namespaces_without_the_marker_are_never_not_running(node: Node) -> None:
    """A shard's namespaces left on a node that does not hold it (an agent killed in
    the middle of a start): a probe saying "not running" would let Pacemaker start the
    shard on another node while these still answer for its addresses."""
    assert node.run("start").returncode == 0
    marker = node.state_dir / f"haven-l3-{node.shard}.l3-held"
    assert marker.exists()
    marker.unlink()
    probe = node.run("monitor")
    assert probe.returncode == 1, probe.stderr
    assert "present but this node does not hold it" in probe.stderr
    assert node.run("stop").returncode == 0
    assert node.ours() == set()
    assert node.run("monitor").returncode == 7


@pytest.mark.parametrize(("over", "reason"), [
    ({"shard": "3"}, "shard must be an integer from 0 to 2, got '3'"),
    ({"shard": "x"}, "shard must be an integer from 0 to 2"),
    ({"shard": "-1"}, "shard must be an integer from 0 to 2"),
    ({"shards": "0"}, "shards must be a positive integer"),
    ({"config": "/nonexistent/haven.yaml"},
     "config file '/nonexistent/haven.yaml' does not exist"),
    ({"namespace_prefix": "a b"}, "namespace_prefix"),
    ({"bridge_wait": "soon"}, "bridge_wait must be an integer from 0 to 3600"),
])
def test_bad_parameters_are_err_configured_yet_stop_succeeds(node: Node, over: dict[str, str],
                                                             reason: str) -> None:
    for action in ("validate-all", "start"):
        result = node.run(action, **over)
        assert result.returncode == 6, result.stderr
        assert f"ocf-exit-reason:{reason}" in result.stderr
    assert node.run("stop", **over).returncode == 0
    assert node.run("monitor", **over).returncode == 7  # a probe: not running here
    assert node.ours() == set()


def test_meta_data_is_valid(node: Node) -> None:
    from xml.etree import ElementTree as ET

    result = node.run("meta-data")
    assert result.returncode == 0
    root = ET.fromstring(result.stdout.split("\n", 2)[2])
    params = {p.get("name"): p.get("required") for p in root.iter("parameter")}
    assert params == {"config": "1", "shard": "1", "shards": "0", "state_dir": "0",
                      "namespace_prefix": "0", "bridge_wait": "0"}
    monitor = next(a for a in root.iter("action") if a.get("name") == "monitor")
    assert monitor.get("interval") == "5s"

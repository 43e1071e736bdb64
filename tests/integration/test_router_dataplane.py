"""A router's data plane, for real, in namespaces this test makes (never the host's).

The test's own "node" namespace holds two bridges: the external network (TEST-NET-3,
203.0.113.0/24, where an "outside" namespace stands for the world) and a tenant
network (10.0.0.0/24, where a "guest" namespace stands for a VM). The router's
namespace is made by :mod:`core.network.routerns` alone, plugged into the node's
bridges. What must hold: the guest reaches the outside masqueraded to the gateway
address; with a floating IP the outside reaches a TCP listener in the guest (and sees
the guest as the floating IP); without it again, it does not; monitor tells running,
drift and stopped apart; stop leaves nothing behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from core.network.routerns import lifecycle, netns
from core.network.routerns.lifecycle import Health
from core.network.routerns.plan import (
    GATEWAY_PREFIX,
    FloatingMap,
    Gateway,
    Leg,
    RouterSpec,
    device_name,
)

SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
    print(c.recv(100).decode())
except OSError as exc:
    print("unreachable", exc)
"""
GW_MAC = "fa:16:3e:00:00:0a"


def sh(*argv: str) -> str:
    return netns.run(argv)


@dataclass
class Lab:
    node: str
    outside: str
    guest: str
    router: str
    servers: list[subprocess.Popen[str]]

    def serve(self, ns: str, port: int) -> None:
        proc = subprocess.Popen(netns.in_ns(ns, sys.executable, "-c", SERVER, str(port)),
                                stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def connect(self, ns: str, address: str, port: int) -> str:
        """What the listener at ``address`` saw as this namespace's address, or
        "unreachable ..."."""
        return sh(*netns.in_ns(ns, sys.executable, "-c", CLIENT, address, str(port))).strip()


def plug(node: str, ns: str, peer: str, bridge: str, mac: str, address: str) -> None:
    sh("ip", "-n", node, "link", "add", peer, "type", "veth", "peer", "name", "eth0",
       "netns", ns)
    sh("ip", "-n", node, "link", "set", peer, "master", bridge, "up")
    sh("ip", "-n", ns, "link", "set", "eth0", "address", mac)
    sh("ip", "-n", ns, "addr", "add", address, "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")


@pytest.fixture
def lab() -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:6]
    made = [f"haven-t-{tag}-{n}" for n in ("node", "out", "gst")]
    lab = Lab(*made, router=f"haven-t-{tag}-rtr", servers=[])
    try:
        for ns in made:
            sh("ip", "netns", "add", ns)
        for bridge in ("brext", "brint"):
            sh("ip", "-n", lab.node, "link", "add", bridge, "type", "bridge")
            sh("ip", "-n", lab.node, "link", "set", bridge, "up")
        plug(lab.node, lab.outside, "o-peer", "brext", "fa:16:3e:00:00:99", "203.0.113.1/24")
        # the outside learns new owners from gratuitous ARP (to see the router announce)
        sh(*netns.in_ns(lab.outside, "sysctl", "-q", "-w", "net.ipv4.conf.eth0.arp_accept=1"))
        plug(lab.node, lab.guest, "g-peer", "brint", "fa:16:3e:00:00:05", "10.0.0.5/24")
        sh("ip", "-n", lab.guest, "route", "add", "default", "via", "10.0.0.1")
        yield lab
    finally:
        for proc in lab.servers:
            proc.kill()
            proc.wait()
        lifecycle.stop(lab.router)
        for ns in made:
            netns.run(["ip", "netns", "del", ns], check=False)


def neighbour_mac(ns: str, address: str) -> str | None:
    for entry in json.loads(sh("ip", "-n", ns, "-j", "neigh", "show", address) or "[]"):
        if entry.get("lladdr"):
            return str(entry["lladdr"])
    return None


def test_snat_floating_ip_and_its_removal(lab: Lab) -> None:
    spec = RouterSpec(
        "r-test", lab.router,
        gateway=Gateway("gw-port-0001", GW_MAC, "203.0.113.10", 24, "brext", "203.0.113.1"),
        interfaces=(Leg("if-port-0001", "fa:16:3e:00:00:01", "10.0.0.1", 24, "brint"),))
    assert lifecycle.monitor(spec, lab.node).health is Health.NOT_RUNNING
    assert lifecycle.start(spec, lab.node).health is Health.RUNNING
    assert lifecycle.start(spec, lab.node).health is Health.RUNNING  # again: no change

    lab.serve(lab.outside, 8080)
    lab.serve(lab.guest, 2222)
    # the guest reaches the outside, which sees the router's gateway address (SNAT)
    assert lab.connect(lab.guest, "203.0.113.1", 8080) == "203.0.113.10"
    assert lab.connect(lab.outside, "203.0.113.20", 2222).startswith("unreachable")

    with_fip = replace(spec, floating_ips=(FloatingMap("203.0.113.20", "10.0.0.5"),))
    assert lifecycle.start(with_fip, lab.node).health is Health.RUNNING
    # announced by gratuitous ARP: the outside knows the address's owner unasked
    assert neighbour_mac(lab.outside, "203.0.113.20") == GW_MAC
    # the outside reaches the guest's listener through the floating IP (DNAT) ...
    assert lab.connect(lab.outside, "203.0.113.20", 2222) == "203.0.113.1"
    # ... and the guest now goes out as its floating IP
    assert lab.connect(lab.guest, "203.0.113.1", 8080) == "203.0.113.20"

    # drift is seen, and start repairs it
    sh(*netns.in_ns(lab.router, "nft", "delete", "table", "ip", "haven_router"))
    status = lifecycle.monitor(with_fip, lab.node)
    assert status.health is Health.FAILED and any("NAT" in p for p in status.problems)
    sh("ip", "-n", lab.router, "addr", "add", "203.0.113.99/32", "dev",
       device_name(GATEWAY_PREFIX, "gw-port-0001"))
    assert any("addresses" in p for p in lifecycle.monitor(with_fip, lab.node).problems)
    assert lifecycle.start(with_fip, lab.node).health is Health.RUNNING
    assert lab.connect(lab.outside, "203.0.113.20", 2222) == "203.0.113.1"

    # the floating IP removed: the outside no longer gets in, the guest is SNATed again
    assert lifecycle.start(spec, lab.node).health is Health.RUNNING
    assert lab.connect(lab.outside, "203.0.113.20", 2222).startswith("unreachable")
    assert lab.connect(lab.guest, "203.0.113.1", 8080) == "203.0.113.10"
    assert lifecycle.monitor(with_fip, lab.node).health is Health.FAILED

    # stop: no namespace, no device left in the node; a second stop is fine too
    lifecycle.stop(lab.router)
    assert lifecycle.monitor(spec, lab.node).health is Health.NOT_RUNNING
    assert lab.router not in netns.namespaces()
    assert not [n for n in netns.links(lab.node) if n.startswith("tap")]
    lifecycle.stop(lab.router)
    assert lab.connect(lab.guest, "203.0.113.1", 8080).startswith("unreachable")

"""A removed rule cuts the connections it admitted, in the round that removes it.

Two guests on one "hypervisor" (namespaces this test makes, as in
test_network_agent_netns, whose Hosts it reuses), the network agent's real rounds
against the real network API, and three long-lived TCP connections from guest 1 to
guest 2: one admitted by a tcp/8080 rule, one by a tcp/8081 rule, one by a tcp/8082
rule from the members of a remote group.

* The 8080 rule is deleted and the ruleset reloaded by an agent that cuts nothing
  (its ``conntrack`` is ``true``): the 8080 connection still works. This is the
  hole: conntrack lets an established connection through whatever the rules say.
* A real agent's round: the 8080 connection's next message never arrives, while
  the 8081 connection, still admitted by its own rule, carries on untouched.
* Guest 1 leaves the remote group a tcp/8082 rule names: its 8082 connection is cut.
* Guest 2's groups are taken off its port: the 8081 connection is cut in turn.

A lost message is one the client waited for a few seconds without an echo and that
the server never logged; every such check follows one on the same path that got
through (waited for patiently), so a broken path does not pass for a cut one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.common.hostnet import tap_name
from core.network.agent.agent import NetworkAgent
from core.network.agent.iproute import IpRoute2, LinuxBridgeDriver
from core.network.agent.linuxbridge import HostConfig
from core.network.agent.secgroup_apply import in_namespace
from core.network.agent.secgroup_conntrack import ConntrackSweeper
from tests.conftest import Services
from tests.integration.test_dhcp_netns import wait_forwarding
from tests.integration.test_network_agent_netns import (
    VTEPS,
    Hosts,
    Tenant,
    api,
    make_tenant,
    rounds_until,
    sh,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft")
    or not shutil.which("conntrack") or not shutil.which("busybox")
    or not os.path.exists("/usr/sbin/dnsmasq"),
    reason="needs root, iproute2, nftables, conntrack, busybox and dnsmasq-base "
           "(appliance/setup.sh)")

ECHO_SERVER = """
import socket, sys, threading
log = open(sys.argv[2], "a", buffering=1)
def serve(conn):
    with conn:
        while data := conn.recv(4096):
            log.write(data.decode()); conn.sendall(data)
listeners = []
for port in sys.argv[3:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(port))); s.listen(4); listeners.append(s)
def accept(s):
    while True:
        threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
for s in listeners:
    threading.Thread(target=accept, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""
# One connection per port given; then each stdin line "N WORD" sends WORD on
# connection N and prints "ok" if the echo comes back within the timeout, else why not.
CLIENT = """
import socket, sys
conns = [socket.create_connection((sys.argv[1], int(p)), 60) for p in sys.argv[2:]]
print("connected", flush=True)
for line in sys.stdin:
    n, word, timeout = line.split()
    c = conns[int(n)]
    c.settimeout(float(timeout))
    try:
        c.sendall(word.encode() + b"\\n")
        got = c.recv(4096)
        print("ok" if got == word.encode() + b"\\n" else f"got {got!r}", flush=True)
    except OSError as exc:
        print(f"lost {exc!r}", flush=True)
"""


@pytest.fixture
def lab(services: Services) -> Iterator[Hosts]:
    """The hypervisors of test_network_agent_netns (its ``hosts`` fixture, here)."""
    state = Path(tempfile.mkdtemp(prefix="haven-t-ctsweep-"))
    state.chmod(0o755)  # dnsmasq, once it has dropped root, reads its hosts file here
    made = Hosts(services, state)
    try:
        made.build()
        yield made
    finally:
        made.remove_all()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def web(services: Services) -> Tenant:
    """A tenant with a network and an empty group ``web`` (its egress rules only)."""
    return make_tenant(services, "p-ctsweep", "u-ctsweep")


class Client:
    """Long-lived connections from a guest, driven one message at a time."""

    def __init__(self, guest: str, address: str, ports: list[int]) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", guest, sys.executable, "-c", CLIENT, address,
             *map(str, ports)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline().strip()
        assert line == "connected", (line, self.proc.stderr and self.proc.stderr.read())

    def send(self, conn: int, word: str, timeout: float) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{conn} {word} {timeout}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def guest_with_address(hosts: Hosts, port: dict[str, Any]) -> str:
    """A guest on hv1 with the port's fixed IP set statically (no DHCP needed here)."""
    guest = hosts.guest("hv1", port)
    sh("ip", "-n", guest, "addr", "add", f"{port['fixed_ips'][0]['ip_address']}/24", "dev",
       "eth0")
    return guest


def agent(hosts: Hosts, conntrack: str) -> NetworkAgent:
    """hv1's agent (as Hosts.agent makes it) with the given ``conntrack`` program."""
    ns = hosts.ns["hv1"]
    return NetworkAgent(
        hosts.services.db, "hv1", VTEPS["hv1"],
        LinuxBridgeDriver(HostConfig(VTEPS["hv1"]), IpRoute2(ns)), hosts.state / "hv1",
        host_netns=ns, namespace_of=lambda net: hosts.service_ns("hv1", net),
        log_dhcp=True, sweeper=ConntrackSweeper(in_namespace(ns), conntrack=conntrack))


def rule(tenant: Tenant, port: int, remote_group: str | None = None) -> str:
    return str(api(tenant.services, "POST", "/v2.0/security-group-rules", {
        "security_group_rule": {
            "security_group_id": tenant.group["id"], "direction": "ingress",
            "ethertype": "IPv4", "protocol": "tcp", "port_range_min": port,
            "port_range_max": port, "remote_group_id": remote_group}}, tenant.token,
        201)["security_group_rule"]["id"])


def set_groups(tenant: Tenant, port: dict[str, Any], groups: list[str]) -> None:
    api(tenant.services, "PUT", f"/v2.0/ports/{port['id']}",
        {"port": {"security_groups": groups}}, tenant.token)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_removed_rule_cuts_the_connections_it_admitted_and_only_those(
        lab: Hosts, web: Tenant) -> None:
    hosts, tenant = lab, web
    p1, p2 = tenant.port("hv1"), tenant.port("hv1")
    g1, g2 = guest_with_address(hosts, p1), guest_with_address(hosts, p2)
    ip2 = p2["fixed_ips"][0]["ip_address"]
    rule_8080 = rule(tenant, 8080)
    rule(tenant, 8081)
    clients = api(tenant.services, "POST", "/v2.0/security-groups", {"security_group": {
        "name": "clients"}}, tenant.token, 201)["security_group"]["id"]
    rule(tenant, 8082, remote_group=clients)  # from members of "clients" only
    set_groups(tenant, p1, [tenant.group["id"], clients])
    hosts.agents["hv1"] = agent(hosts, "conntrack")
    rounds_until(hosts, lambda: {tenant.show(p)["status"] for p in (p1, p2)} == {"ACTIVE"})
    for p in (p1, p2):
        wait_forwarding(hosts.ns["hv1"], tap_name(p["id"]))

    log = hosts.state / "echo.log"
    log.touch()
    server = subprocess.Popen(["ip", "netns", "exec", g2, sys.executable, "-c", ECHO_SERVER,
                               ip2, str(log), "8080", "8081", "8082"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    hosts.procs.append(server)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    client = Client(g1, ip2, [8080, 8081, 8082])
    try:
        assert client.send(0, "a1", 60) == "ok"
        assert client.send(1, "b1", 60) == "ok"
        assert client.send(2, "c1", 60) == "ok"

        def lost(conn: int, word: str) -> bool:
            answer = client.send(conn, word, 4)
            return answer.startswith("lost") and word not in log.read_text()

        # the hole: the rule is gone and the new ruleset loaded, but nothing cut
        api(tenant.services, "DELETE", f"/v2.0/security-group-rules/{rule_8080}",
            token=tenant.token, status=204)
        hosts.agents["hv1"] = agent(hosts, "true")
        result = hosts.converge("hv1")["hv1"]
        assert result.filter_error is None and result.connections_cut == 0
        assert client.send(0, "a2", 60) == "ok"  # still through: established

        # the agent's round cuts it: its next message is dropped; 8081 carries on
        hosts.agents["hv1"] = agent(hosts, "conntrack")
        result = hosts.converge("hv1")["hv1"]
        assert result.filter_error is None and result.conntrack_error is None, result
        assert result.connections_cut == 1, result
        assert lost(0, "a3"), log.read_text()
        assert client.send(1, "b2", 60) == "ok"
        assert hosts.converge("hv1")["hv1"].connections_cut == 0  # nothing changed since

        # guest 1 leaves "clients": the 8082 connection (a remote-group rule's) goes
        set_groups(tenant, p1, [tenant.group["id"]])
        result = hosts.converge("hv1")["hv1"]
        assert result.conntrack_error is None and result.connections_cut == 1, result
        assert lost(2, "c2"), log.read_text()
        assert client.send(1, "b3", 60) == "ok"

        # guest 2's groups taken off its port: the 8081 connection goes too
        set_groups(tenant, p2, [])
        result = hosts.converge("hv1")["hv1"]
        assert result.conntrack_error is None and result.connections_cut == 1, result
        assert lost(1, "b4"), log.read_text()
    finally:
        client.close()
        assert server.stdin is not None
        server.stdin.close()


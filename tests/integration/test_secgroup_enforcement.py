"""Security groups enforced for real: rules made through the network API, compiled
for a "hypervisor" and loaded into its kernel, decide which TCP connections between
"guests" get through.

The hypervisor is a network namespace the test makes, with a Linux bridge; each
guest is a namespace with a veth whose other end is the guest's tap in the bridge
(MAC and address of its port from the API). Nothing is created outside these
namespaces, and they are removed at the end.

A refused connection is one whose SYN the filter drops: the client gives up after
a few seconds and the server never accepted it. An allowed one is waited for
patiently (a minute), and every path that is refused at one step is allowed at
another, so neither a broken filter nor a slow machine passes unnoticed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.common.hostnet import tap_name
from core.network.agent.secgroup_apply import NftApplier, in_namespace
from core.network.agent.secgroup_nft import HostPorts
from core.network.agent.secgroup_source import host_ports
from tests.conftest import Services

pytestmark = pytest.mark.skipif(shutil.which("nft") is None or shutil.which("ip") is None,
                                reason="nftables and iproute2 are needed")

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
log = open(sys.argv[3], "a", buffering=1)
print("ready", flush=True)
while True:
    c, peer = s.accept(); log.write(peer[0] + "\\n"); c.close()
"""
CLIENT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])).close()
except OSError as exc:
    print(exc); sys.exit(1)
"""


def listen(ns: str, address: str, port: int, log: Path) -> subprocess.Popen[str]:
    """A listener in ``ns`` that logs each peer's address to ``log``, returned once
    it listens: a connect before that would be refused and prove nothing."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, address,
                             str(port), str(log)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", \
        f"no listener at {address}:{port} in {ns}"
    return proc


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@dataclass
class Lab:
    """One hypervisor namespace with a bridge, and guests plugged into it."""

    prefix: str
    hv: str
    guests: list[str]
    servers: list[subprocess.Popen[str]]
    logs: Path

    def guest(self, name: str, tap: str, mac: str, address: str) -> str:
        ns = f"{self.prefix}-{name}"
        sh("ip", "netns", "add", ns)
        self.guests.append(ns)
        sh("ip", "-n", self.hv, "link", "add", tap, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("ip", "-n", self.hv, "link", "set", tap, "master", "br0", "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "address", mac)
        sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def serve(self, ns: str, address: str, port: int) -> Path:
        log = self.logs / f"{ns}-{port}.log"
        log.touch()
        self.servers.append(listen(ns, address, port, log))
        return log

    def connects(self, ns: str, address: str, port: int, timeout: float) -> bool:
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT,
                               address, str(port), str(timeout)], capture_output=True,
                              timeout=timeout + 60)
        return done.returncode == 0


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    prefix = f"haven-t-{uuid.uuid4().hex[:6]}"
    hv = f"{prefix}-hv"
    sh("ip", "netns", "add", hv)
    made = Lab(prefix, hv, [], [], tmp_path)
    try:
        sh("ip", "-n", hv, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", hv, "link", "set", "br0", "up")
        sh("ip", "-n", hv, "link", "set", "lo", "up")
        yield made
    finally:
        for proc in made.servers:
            proc.kill()
            proc.wait()
        for ns in [*made.guests, hv]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=60)


def api(services: Services, method: str, path: str, body: dict[str, Any] | None = None,
        status: int = 200) -> Any:
    resp = services.call(method, "network", path, json=body)
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else {}


@dataclass
class Cloud:
    """The API side: one network, and ports of guests ``a``, ``b`` and ``c``."""

    services: Services
    ports: dict[str, dict[str, Any]]

    def port(self, name: str) -> dict[str, Any]:
        return dict(api(self.services, "GET", f"/v2.0/ports/{self.ports[name]['id']}")["port"])

    def compiled(self) -> HostPorts:
        """What the hypervisor enforces now, read from the API as the agent would."""
        local = [self.port(n) for n in self.ports]
        groups = api(self.services, "GET", "/v2.0/security-groups")["security_groups"]
        return host_ports(local, groups, local, bridge=lambda _port: ("br0", 7))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_rules_decide_which_connections_get_through(services: Services, lab: Lab) -> None:
    net = api(services, "POST", "/v2.0/networks", {"network": {"name": "sg-net"}}, 201)
    net_id = net["network"]["id"]
    api(services, "POST", "/v2.0/subnets", {"subnet": {
        "network_id": net_id, "cidr": "10.9.0.0/24", "ip_version": 4}}, 201)
    web = api(services, "POST", "/v2.0/security-groups",
              {"security_group": {"name": "web"}}, 201)["security_group"]
    clients = api(services, "POST", "/v2.0/security-groups",
                  {"security_group": {"name": "clients"}}, 201)["security_group"]
    others = api(services, "POST", "/v2.0/security-groups",
                 {"security_group": {"name": "others"}}, 201)["security_group"]
    groups = {"a": clients, "b": web, "c": others}
    addresses = {"a": "10.9.0.11", "b": "10.9.0.12", "c": "10.9.0.13"}
    ports = {}
    for name, group in groups.items():
        ports[name] = api(services, "POST", "/v2.0/ports", {"port": {
            "network_id": net_id, "name": name, "fixed_ips": [{"ip_address": addresses[name]}],
            "security_groups": [group["id"]]}}, 201)["port"]
    cloud = Cloud(services, ports)
    ns = {n: lab.guest(n, tap_name(p["id"]), p["mac_address"], addresses[n])
          for n, p in ports.items()}
    # a device that is no guest (as a router's leg would be): unfiltered itself, but
    # what it sends a guest meets the guest's ingress rules
    ns["r"] = lab.guest("r", "vethr0", "fa:16:3e:77:77:77", "10.9.0.50")
    b_ip = addresses["b"]
    seen_8080 = lab.serve(ns["b"], b_ip, 8080)
    seen_8081 = lab.serve(ns["b"], b_ip, 8081)
    applier = NftApplier(in_namespace(lab.hv))
    applier.apply(cloud.compiled())

    def refused(src: str, port: int, log: Path) -> bool:
        before = log.read_text()
        blocked = not lab.connects(ns[src], b_ip, port, 3)
        return blocked and log.read_text() == before

    # egress is allowed by the new groups' default rules: b answers nothing yet, but
    # the path works once b lets it in (checked below); by default ingress is refused
    assert refused("a", 8080, seen_8080), applier.ruleset()
    assert refused("c", 8080, seen_8080)
    assert refused("r", 8080, seen_8080)

    # a rule lets tcp/8080 in from anywhere: recompiled, reloaded, the next SYN passes
    rule = api(services, "POST", "/v2.0/security-group-rules", {"security_group_rule": {
        "security_group_id": web["id"], "direction": "ingress", "protocol": "tcp",
        "port_range_min": 8080, "port_range_max": 8080}}, 201)["security_group_rule"]
    applier.apply(cloud.compiled())
    assert lab.connects(ns["a"], b_ip, 8080, 60), applier.ruleset()
    assert lab.connects(ns["c"], b_ip, 8080, 60)
    assert lab.connects(ns["r"], b_ip, 8080, 60)
    # tracked by the hypervisor's conntrack, in the network's zone
    tracked = subprocess.run(["ip", "netns", "exec", lab.hv, "cat", "/proc/net/nf_conntrack"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    assert [line for line in tracked.splitlines()
            if f"src={addresses['a']} dst={b_ip}" in line and "dport=8080" in line
            and "zone=7" in line], tracked
    assert refused("a", 8081, seen_8081)  # only the port the rule names

    # the rule deleted: refused again
    api(services, "DELETE", f"/v2.0/security-group-rules/{rule['id']}", status=204)
    applier.apply(cloud.compiled())
    assert refused("a", 8080, seen_8080), applier.ruleset()

    # a remote-group rule: tcp/8081 from members of "clients" (a), not from c
    api(services, "POST", "/v2.0/security-group-rules", {"security_group_rule": {
        "security_group_id": web["id"], "direction": "ingress", "protocol": "tcp",
        "port_range_min": 8081, "port_range_max": 8081,
        "remote_group_id": clients["id"]}}, 201)
    applier.apply(cloud.compiled())
    assert lab.connects(ns["a"], b_ip, 8081, 60), applier.ruleset()
    assert refused("c", 8081, seen_8081), applier.ruleset()
    assert refused("r", 8081, seen_8081)

    # c joins "clients": only the group's set changes (no new ruleset), and c gets in
    api(services, "PUT", f"/v2.0/ports/{ports['c']['id']}", {"port": {
        "security_groups": [clients["id"]]}})
    current = cloud.compiled()
    applier.update_members({clients["id"]: current.members[clients["id"]]})
    assert lab.connects(ns["c"], b_ip, 8081, 60), applier.ruleset()

    # anti-spoofing: tcp/8080 open to anyone again, but only from a's own address and MAC
    api(services, "POST", "/v2.0/security-group-rules", {"security_group_rule": {
        "security_group_id": web["id"], "direction": "ingress", "protocol": "tcp",
        "port_range_min": 8080, "port_range_max": 8080}}, 201)
    applier.apply(cloud.compiled())
    assert lab.connects(ns["a"], b_ip, 8080, 60), applier.ruleset()
    sh("ip", "-n", ns["a"], "addr", "flush", "dev", "eth0")
    sh("ip", "-n", ns["a"], "addr", "add", "10.9.0.99/24", "dev", "eth0")
    assert refused("a", 8080, seen_8080), applier.ruleset()
    sh("ip", "-n", ns["a"], "addr", "flush", "dev", "eth0")
    sh("ip", "-n", ns["a"], "addr", "add", f"{addresses['a']}/24", "dev", "eth0")
    sh("ip", "-n", ns["a"], "link", "set", "eth0", "address", "fa:16:3e:99:99:99")
    assert refused("a", 8080, seen_8080), applier.ruleset()
    sh("ip", "-n", ns["a"], "link", "set", "eth0", "address", str(ports["a"]["mac_address"]))
    assert lab.connects(ns["a"], b_ip, 8080, 60)

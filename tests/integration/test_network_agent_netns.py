"""The network agent for real: two "hypervisors", each running the agent's rounds
against the real network API and database, with guests that get their address by
DHCP from their own hypervisor, reach each other over VXLAN as their security
group allows, and whose ports turn ACTIVE only once plugged and filtered.

Every test runs once per data-path mechanism: Linux bridges, and Open vSwitch
(userspace, an ovsdb-server and ovs-vswitchd per hypervisor namespace:
tests/integration/ovs_switch.py) with each tap in a Linux bridge of its own where
the same nftables filter runs (hybrid plugging).

Every hypervisor, guest and service namespace is a network namespace this test
makes (``haven-t-*``, removed at the end); the hypervisors' underlay is a veth
between two of them. Nothing is created in the machine's own namespace and no
packet leaves the machine. A guest's eth0 is a veth whose other end, in the
hypervisor, has the port's tap name: it stands in for QEMU's tap.

Rounds are counted, never timed: a condition is checked after each round, for at
most a few rounds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core.common.hostnet import tap_name
from core.network.agent.agent import NetworkAgent, RoundResult
from core.network.agent.driver import DataPathDriver
from core.network.agent.iproute import IpRoute2, LinuxBridgeDriver
from core.network.agent.linuxbridge import HostConfig, bridge_name
from core.network.agent.openvswitch import OvsHostConfig
from core.network.agent.ovsctl import OpenVSwitchDriver
from core.network.agent.secgroup_apply import NftApplier, in_namespace
from core.network.agent.servicens import inner_name
from core.network.routerns.source import bind_to
from tests.conftest import Services
from tests.integration.ovs_switch import Switch, have_ovs
from tests.integration.test_dhcp_netns import dhcp, no_lease, wait_forwarding
from tests.integration.test_secgroup_enforcement import CLIENT, listen

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft")
    or not shutil.which("busybox") or not os.path.exists("/usr/sbin/dnsmasq"),
    reason="needs root, iproute2, nftables, busybox and dnsmasq-base (appliance/setup.sh)")

VTEPS = {"hv1": "172.30.0.1", "hv2": "172.30.0.2"}
MECHANISMS = [pytest.param("linuxbridge"), pytest.param("openvswitch", marks=pytest.mark.skipif(
    not have_ovs(), reason="needs Open vSwitch (appliance/setup.sh installs it)"))]
CIDR = "10.44.0.0/24"
PORT = 8080


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr}")
    return done


def links(ns: str) -> dict[str, dict[str, Any]]:
    return {i["ifname"]: i for i in json.loads(sh("ip", "-n", ns, "-j", "link", "show").stdout)}


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


@dataclass
class Hosts:
    """The test's namespaces, its hypervisors' agents, and its servers."""

    services: Services
    state: Path
    mechanism: str = "linuxbridge"
    switches: dict[str, Switch] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"haven-t-na{uuid.uuid4().hex[:6]}")
    made: list[str] = field(default_factory=list)
    ns: dict[str, str] = field(default_factory=dict)  # host -> its namespace
    agents: dict[str, NetworkAgent] = field(default_factory=dict)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def add_ns(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def service_ns(self, host: str, network_id: str) -> str:
        return f"{self.prefix}-s{host[-1]}-{network_id[:8]}"

    def build(self) -> None:
        for host in VTEPS:
            self.ns[host] = self.add_ns(host)
        hv1, hv2 = self.ns["hv1"], self.ns["hv2"]
        sh("ip", "-n", hv1, "link", "add", "und", "type", "veth", "peer", "name", "und",
           "netns", hv2)
        for host, ns in self.ns.items():
            sh("ip", "-n", ns, "link", "set", "und", "mtu", "1500", "up")
            if self.mechanism == "openvswitch":
                rundir = self.state / f"ovs-{host}"
                rundir.mkdir()
                self.switches[host] = Switch(ns, rundir)
                self.switches[host].start()
                self.switches[host].underlay("und", VTEPS[host])
            else:
                sh("ip", "-n", ns, "addr", "add", f"{VTEPS[host]}/24", "dev", "und")
            self.agents[host] = self.agent(host)

    def driver(self, host: str) -> DataPathDriver:
        if self.mechanism == "openvswitch":
            return OpenVSwitchDriver(OvsHostConfig(VTEPS[host], {}, "netdev"),
                                     self.switches[host].ctl())
        return LinuxBridgeDriver(HostConfig(VTEPS[host]), IpRoute2(self.ns[host]))

    def agent(self, host: str, applier: NftApplier | None = None) -> NetworkAgent:
        ns = self.ns[host]
        state = self.state / host
        return NetworkAgent(
            self.services.db, host, VTEPS[host], self.driver(host), state, host_netns=ns,
            namespace_of=lambda net, h=host: self.service_ns(h, net), applier=applier,
            log_dhcp=True)

    def bridge_of(self, host: str, port: dict[str, Any]) -> str:
        """The Linux bridge the port's tap must be in: where its filter runs."""
        return self.agents[host].driver.filter_bridge(port["id"], port["network_id"])

    def wait_plugged(self, host: str, port: dict[str, Any]) -> None:
        """Every member of the port's bridge forwarding (its tap, and on Open vSwitch
        the veth to br-int)."""
        bridge = self.bridge_of(host, port)
        for name, link in links(self.ns[host]).items():
            if link.get("master") == bridge:
                wait_forwarding(self.ns[host], name)

    def converge(self, *hosts: str) -> dict[str, RoundResult]:
        return {h: self.agents[h].converge() for h in (hosts or tuple(self.agents))}

    def guest(self, host: str, port: dict[str, Any]) -> str:
        """A guest whose eth0 (the port's MAC, no address) is the other end of the
        port's tap on ``host``, as QEMU's tap would be."""
        guest = self.add_ns(f"g{len(self.made)}")
        sh("ip", "-n", self.ns[host], "link", "add", tap_name(port["id"]), "type", "veth",
           "peer", "name", "eth0", "netns", guest)
        sh("ip", "-n", self.ns[host], "link", "set", tap_name(port["id"]), "up")
        sh("ip", "-n", guest, "link", "set", "eth0", "address", port["mac_address"], "up")
        return guest

    def serve(self, guest: str, address: str) -> Path:
        log = self.state / f"{guest}.accepted"
        log.touch()
        self.procs.append(listen(guest, address, PORT, log))
        return log

    def connects(self, guest: str, address: str, timeout: float) -> bool:
        done = subprocess.run(["ip", "netns", "exec", guest, sys.executable, "-c", CLIENT,
                               address, str(PORT), str(timeout)], capture_output=True,
                              timeout=timeout + 60)
        return done.returncode == 0

    def remove_all(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for agent in self.agents.values():
            agent.dhcp.stop_all()
            for network_id in agent.namespaces.managed():
                agent.namespaces.remove(network_id)
        for switch in self.switches.values():
            switch.stop()
        for name in reversed(self.made):
            sh("ip", "netns", "del", name, check=False)


@pytest.fixture(params=MECHANISMS)
def hosts(services: Services, request: pytest.FixtureRequest) -> Iterator[Hosts]:
    # dnsmasq, once it has dropped root, must still read its hosts file: not tmp_path
    state = Path(tempfile.mkdtemp(prefix="haven-t-netagent-"))
    state.chmod(0o755)
    made = Hosts(services, state, request.param)
    try:
        made.build()
        yield made
    finally:
        made.remove_all()
        shutil.rmtree(state, ignore_errors=True)


def api(services: Services, method: str, path: str, body: dict[str, Any] | None = None,
        token: str | None = None, status: int = 200) -> Any:
    resp = services.call(method, "network", path, token, json=body)
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else {}


@dataclass
class Tenant:
    services: Services
    token: str
    network: dict[str, Any]
    subnet: dict[str, Any]
    group: dict[str, Any]

    def port(self, host: str) -> dict[str, Any]:
        """A port in the tenant's ``web`` group, bound to ``host`` by the admin (as
        compute does)."""
        made = api(self.services, "POST", "/v2.0/ports", {"port": {
            "network_id": self.network["id"], "device_owner": "compute:nova",
            "security_groups": [self.group["id"]]}}, self.token, 201)["port"]
        return dict(api(self.services, "PUT", f"/v2.0/ports/{made['id']}",
                        {"port": {"binding:host_id": host}})["port"])

    def show(self, port: dict[str, Any]) -> dict[str, Any]:
        return dict(api(self.services, "GET", f"/v2.0/ports/{port['id']}")["port"])

    def dhcp_ports(self) -> dict[str, dict[str, Any]]:
        """The network's DHCP ports by host (one per host, or the test fails)."""
        found = [p for p in api(self.services, "GET", "/v2.0/ports")["ports"]
                 if p["network_id"] == self.network["id"]
                 and p["device_owner"] == "network:dhcp"]
        by_host = {p["binding:host_id"]: p for p in found}
        assert len(by_host) == len(found), found
        return by_host


@pytest.fixture
def tenant(services: Services) -> Tenant:
    return make_tenant(services, "p-netagent", "u-netagent")


def make_tenant(services: Services, project: str, user: str) -> Tenant:
    """A member of ``project`` with a network, a DHCP subnet and an empty group ``web``
    (its egress rules only)."""
    token = services.member(project, user)
    net = api(services, "POST", "/v2.0/networks", {"network": {"name": "n1"}}, token,
              201)["network"]
    sub = api(services, "POST", "/v2.0/subnets", {"subnet": {
        "network_id": net["id"], "cidr": CIDR, "ip_version": 4, "gateway_ip": "10.44.0.1",
        "enable_dhcp": True}}, token, 201)["subnet"]
    group = api(services, "POST", "/v2.0/security-groups", {"security_group": {
        "name": "web"}}, token, 201)["security_group"]
    return Tenant(services, token, net, sub, group)


def rounds_until(hosts: Hosts, done: Any, limit: int = 4) -> None:
    """Converge every hypervisor, round after round, until ``done()`` (at most
    ``limit`` rounds: a converged host needs one, a peer's entries a second)."""
    for _ in range(limit):
        hosts.converge()
        if done():
            return
    raise AssertionError(f"not converged after {limit} rounds")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_two_hypervisors_dhcp_vxlan_security_groups_and_port_status(
        hosts: Hosts, tenant: Tenant) -> None:
    net_id = tenant.network["id"]
    p1, p2 = tenant.port("hv1"), tenant.port("hv2")
    g1, g2 = hosts.guest("hv1", p1), hosts.guest("hv2", p2)

    # hv1's round touches nothing of hv2: its port, its DHCP port, its devices
    hosts.converge("hv1")
    assert tenant.show(p2)["status"] == "DOWN"
    assert set(tenant.dhcp_ports()) == {"hv1"}
    assert links(hosts.ns["hv2"])[tap_name(p2["id"])].get("master") is None

    rounds_until(hosts, lambda: {tenant.show(p)["status"] for p in (p1, p2)} == {"ACTIVE"})
    for result in hosts.converge().values():  # a converged round changes nothing
        assert not result.changed and not result.dhcp_refused and not result.filter_error
    for host, p in (("hv1", p1), ("hv2", p2)):
        assert links(hosts.ns[host])[tap_name(p["id"])]["master"] == hosts.bridge_of(host, p)

    # one DHCP port per (network, host), its address in the subnet, in the host's
    # service namespace with the metadata address
    dhcp_ports = tenant.dhcp_ports()
    assert set(dhcp_ports) == {"hv1", "hv2"}
    server = {}
    for host, dp in dhcp_ports.items():
        assert dp["device_owner"] == "network:dhcp" and dp["status"] == "ACTIVE"
        [fixed] = dp["fixed_ips"]
        assert fixed["subnet_id"] == tenant.subnet["id"]
        server[host] = fixed["ip_address"]
        svc = hosts.service_ns(host, net_id)
        addrs = sh("ip", "-n", svc, "-o", "addr", "show", "dev", inner_name(dp["id"])).stdout
        assert f"{server[host]}/24" in addrs and "169.254.169.254/32" in addrs
        assert hosts.agents[host].dhcp.running_pid(net_id) is not None

    # each guest gets its own address from its own hypervisor's dnsmasq
    for host, guest, p in (("hv1", g1, p1), ("hv2", g2, p2)):
        hosts.wait_plugged(host, p)
        lease = dhcp(guest, hosts.state, tries=10, wait=1)
        assert lease is not None, (host, hosts.agents[host].dhcp.log_path(net_id).read_text())
        assert lease.ip == p["fixed_ips"][0]["ip_address"]
        assert lease.serverid == server[host]
        # every subnet's guests are routed to this host's metadata address
        assert lease.staticroutes.startswith(f"169.254.169.254/32 {server[host]} "), lease

    # the metadata address answers from the service namespace (what compute serves
    # there), over the route the guest was given
    svc1 = hosts.service_ns("hv1", net_id)
    served = hosts.serve(svc1, "169.254.169.254")
    sh("ip", "-n", g1, "route", "add", "169.254.169.254/32", "via", server["hv1"])
    assert hosts.connects(g1, "169.254.169.254", timeout=60)
    assert served.read_text().splitlines() == [p1["fixed_ips"][0]["ip_address"]]

    # ingress is refused by default (the SYN went over VXLAN and was dropped at g2)...
    ip2 = p2["fixed_ips"][0]["ip_address"]
    accepted = hosts.serve(g2, ip2)
    assert not hosts.connects(g1, ip2, timeout=3)
    assert accepted.read_text() == ""
    # ...and allowed by a rule added through the API, after the next round
    api(tenant.services, "POST", "/v2.0/security-group-rules", {"security_group_rule": {
        "security_group_id": tenant.group["id"], "direction": "ingress", "ethertype": "IPv4",
        "protocol": "tcp", "port_range_min": PORT, "port_range_max": PORT}}, tenant.token, 201)
    hosts.converge()
    assert hosts.connects(g1, ip2, timeout=60)
    assert accepted.read_text().splitlines() == [p1["fixed_ips"][0]["ip_address"]]

    # a port's bridge deleted by hand is made again by the next round, the tap back in
    # it and the guest reachable again
    sh("ip", "-n", hosts.ns["hv2"], "link", "del", hosts.bridge_of("hv2", p2))
    hosts.converge("hv2")
    assert links(hosts.ns["hv2"])[tap_name(p2["id"])]["master"] == hosts.bridge_of("hv2", p2)
    assert tenant.show(p2)["status"] == "ACTIVE"
    hosts.wait_plugged("hv2", p2)
    assert hosts.connects(g1, ip2, timeout=60)
    assert accepted.read_text().splitlines() == [p1["fixed_ips"][0]["ip_address"]] * 2

    # the last port of the network on hv2 goes: its tap leaves the bridge, the
    # namespace, the DHCP port and dnsmasq go; hv1 keeps all of its own
    api(tenant.services, "DELETE", f"/v2.0/ports/{p2['id']}", token=tenant.token, status=204)
    hosts.converge()
    hv2 = links(hosts.ns["hv2"])
    assert hv2[tap_name(p2["id"])].get("master") is None
    assert hosts.bridge_of("hv2", p2) not in hv2
    assert not netns_exists(hosts.service_ns("hv2", net_id))
    assert set(tenant.dhcp_ports()) == {"hv1"}
    assert hosts.agents["hv2"].dhcp.running_pid(net_id) is None
    assert tenant.show(p1)["status"] == "ACTIVE"
    assert netns_exists(hosts.service_ns("hv1", net_id))

    # a tap that is gone (the guest stopped) is DOWN
    sh("ip", "-n", hosts.ns["hv1"], "link", "del", tap_name(p1["id"]))
    hosts.converge("hv1")
    assert tenant.show(p1)["status"] == "DOWN"


@pytest.mark.parametrize("hosts", ["linuxbridge"], indirect=True)  # mechanism-blind
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_port_whose_filter_cannot_be_loaded_is_neither_plugged_nor_active(
        hosts: Hosts, tenant: Tenant) -> None:
    """Fail closed: the ruleset does not load (here: nft exits 1), so the new port's
    tap stays out of the bridge and the port is not ACTIVE; once it loads, both."""
    hv = hosts.ns["hv1"]
    hosts.agents["hv1"] = hosts.agent("hv1", NftApplier(in_namespace(hv), nft="false"))
    p1 = tenant.port("hv1")
    hosts.guest("hv1", p1)
    for _ in range(2):
        result = hosts.converge("hv1")["hv1"]
        assert result.filter_error is not None
    assert tenant.show(p1)["status"] == "DOWN"
    assert links(hv)[tap_name(p1["id"])].get("master") is None
    # the DHCP port, never filtered, is plugged all the same
    assert tenant.dhcp_ports()["hv1"]["status"] == "ACTIVE"

    hosts.agents["hv1"] = hosts.agent("hv1")
    assert hosts.converge("hv1")["hv1"].filter_error is None
    assert tenant.show(p1)["status"] == "ACTIVE"
    assert links(hv)[tap_name(p1["id"])]["master"] == hosts.bridge_of("hv1", p1)

    # a later ruleset that does not load takes ACTIVE away (its rules are not in force)
    hosts.agents["hv1"] = hosts.agent("hv1", NftApplier(in_namespace(hv), nft="false"))
    hosts.converge("hv1")
    assert tenant.show(p1)["status"] == "DOWN"


@pytest.mark.parametrize("hosts", ["linuxbridge"], indirect=True)  # mechanism-blind
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_port_moved_to_another_host_is_down_until_that_host_has_plugged_it(
        hosts: Hosts, tenant: Tenant) -> None:
    """Evacuation's order: the old host's ACTIVE must never be what compute sees on
    the new host, and the old host must neither mark nor keep plugging the port."""
    p1 = tenant.port("hv1")
    hosts.guest("hv1", p1)
    rounds_until(hosts, lambda: tenant.show(p1)["status"] == "ACTIVE")

    moved = api(tenant.services, "PUT", f"/v2.0/ports/{p1['id']}",
                {"port": {"binding:host_id": "hv2"}})["port"]
    assert moved["status"] == "DOWN"
    hosts.converge("hv1")  # the host it left: unplugs it, does not mark it
    assert tenant.show(p1)["status"] == "DOWN"
    assert links(hosts.ns["hv1"])[tap_name(p1["id"])].get("master") is None
    hosts.guest("hv2", p1)
    hosts.converge("hv2")
    assert tenant.show(p1)["status"] == "ACTIVE"
    assert links(hosts.ns["hv2"])[tap_name(p1["id"])]["master"] == hosts.bridge_of("hv2", p1)


@pytest.mark.parametrize("hosts", ["linuxbridge"], indirect=True)  # routers: Linux bridges
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_routers_leg_bound_here_is_carried_unfiltered_and_kept_plugged(
        hosts: Hosts, tenant: Tenant) -> None:
    """A router's shard binds its ports to its node (core/network/routerns/source.py):
    that node's agent makes the network's bridge for it, keeps the leg the shard
    plugged into it (never unplugs it as a stranger: it has no filter, being the
    cloud's own device), marks it ACTIVE, and makes no DHCP port for it."""
    router = api(tenant.services, "POST", "/v2.0/routers", {"router": {"name": "r1"}},
                 tenant.token, 201)["router"]
    leg = api(tenant.services, "PUT", f"/v2.0/routers/{router['id']}/add_router_interface",
              {"subnet_id": tenant.subnet["id"]}, tenant.token)
    moved = tenant.services.db.run_in_transaction(lambda s: bind_to(s, router["id"], "hv1"))
    assert moved == [leg["port_id"]]
    hv, bridge = hosts.ns["hv1"], bridge_name(tenant.network["id"])
    hosts.converge("hv1")
    assert bridge in links(hv)
    # what the shard does: its leg's peer, named as a tap, into the bridge
    hosts.guest("hv1", {"id": leg["port_id"], "mac_address": "fa:16:3e:00:00:01"})
    sh("ip", "-n", hv, "link", "set", tap_name(leg["port_id"]), "master", bridge)
    for _ in range(2):
        result = hosts.converge("hv1")["hv1"]
        assert result.filter_error is None
        assert links(hv)[tap_name(leg["port_id"])].get("master") == bridge
    assert tenant.show({"id": leg["port_id"]})["status"] == "ACTIVE"
    assert tenant.dhcp_ports() == {}


@pytest.mark.parametrize("hosts", ["linuxbridge"], indirect=True)  # mechanism-blind
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_dhcp_switched_off_and_on_through_the_api_is_followed(
        hosts: Hosts, tenant: Tenant) -> None:
    """``PUT /v2.0/subnets/{id}`` with ``enable_dhcp``: off, the host's dnsmasq for the
    network stops and its DHCP port frees its address (the namespace loses it); on
    again, both come back and the guest gets its lease."""
    net_id, sub_path = tenant.network["id"], f"/v2.0/subnets/{tenant.subnet['id']}"
    p1 = tenant.port("hv1")
    g1 = hosts.guest("hv1", p1)
    rounds_until(hosts, lambda: tenant.show(p1)["status"] == "ACTIVE")
    hosts.wait_plugged("hv1", p1)
    assert dhcp(g1, hosts.state, tries=10, wait=1) is not None
    svc = hosts.service_ns("hv1", net_id)

    def served() -> tuple[bool, list[Any], bool]:
        dp = tenant.dhcp_ports()["hv1"]
        addrs = sh("ip", "-n", svc, "-o", "addr", "show", "dev", inner_name(dp["id"])).stdout
        return (hosts.agents["hv1"].dhcp.running_pid(net_id) is not None, dp["fixed_ips"],
                "10.44.0." in addrs)

    api(tenant.services, "PUT", sub_path, {"subnet": {"enable_dhcp": False}}, tenant.token)
    rounds_until(hosts, lambda: served() == (False, [], False))
    assert no_lease(g1, hosts.state)

    api(tenant.services, "PUT", sub_path, {"subnet": {"enable_dhcp": True}}, tenant.token)
    rounds_until(hosts, lambda: served()[0] and served()[2] and len(served()[1]) == 1)
    lease = dhcp(g1, hosts.state, tries=10, wait=1)
    assert lease is not None, hosts.agents["hv1"].dhcp.log_path(net_id).read_text()
    assert lease.ip == p1["fixed_ips"][0]["ip_address"]
    assert lease.serverid == served()[1][0]["ip_address"]

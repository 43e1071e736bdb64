"""The Linux bridge data path on real devices: hypervisors and guests are network
namespaces this test makes (``haven-t-*``, removed at the end); nothing is created
in the machine's own namespace and no packet leaves the machine.

Two "hypervisors" are joined by an underlay veth (their VTEP addresses, TEST-NET-2)
and a second veth standing in for a shared physical network. Each guest is a
namespace whose veth's other end, in the hypervisor, is the port's tap. Networks
and ports are made through the network API (segments allocated by Haven, ports
bound with ``binding:host_id``); each hypervisor's data path is what
``LinuxBridgeDriver.sync(desired_state(db, host))`` makes of the database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.common.hostnet import tap_name
from core.network.agent.datapath import converge
from core.network.agent.desired import register_vtep
from core.network.agent.iproute import IpRoute2, LinuxBridgeDriver
from core.network.agent.linuxbridge import HostConfig, Link
from tests.conftest import Services
from tests.integration.segments_cloud import segments_cloud

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="needs root and iproute2 to make network namespaces")

VTEPS = {"hv1": "198.51.100.1", "hv2": "198.51.100.2"}
PHYSNET = {"physnet1": "phys"}


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr}")
    return done


@dataclass
class Namespaces:
    """The namespaces of one test, all named ``haven-t-<id>-<role>``."""

    prefix: str = field(default_factory=lambda: f"haven-t-dp{uuid.uuid4().hex[:6]}")
    made: list[str] = field(default_factory=list)

    def add(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def remove_all(self) -> None:
        for name in reversed(self.made):
            sh("ip", "netns", "del", name, check=False)


@dataclass
class Hypervisors:
    ns: Namespaces
    hosts: dict[str, str]  # host name -> its namespace

    def driver(self, host: str) -> LinuxBridgeDriver:
        return LinuxBridgeDriver(HostConfig(VTEPS[host], PHYSNET), IpRoute2(self.hosts[host]))

    def guest(self, host: str, port: dict[str, object], address: str) -> str:
        """A guest namespace whose eth0 (the port's MAC, MTU 1500 like an unconfigured
        guest) is the other end of the port's tap on ``host``."""
        guest = self.ns.add(f"g{len(self.ns.made)}")
        tap = tap_name(str(port["id"]))
        sh("ip", "-n", self.hosts[host], "link", "add", tap, "type", "veth", "peer", "name",
           "eth0", "netns", guest)
        sh("ip", "-n", guest, "link", "set", "eth0", "address", str(port["mac_address"]),
           "mtu", "1500", "up")
        sh("ip", "-n", guest, "addr", "add", f"{address}/24", "dev", "eth0")
        return guest


def wired_hosts(ns: Namespaces) -> dict[str, str]:
    """The two hypervisors' namespaces, joined by an underlay veth ``und`` and a
    "physical" one ``phys``, both up at 1500 (no address yet: the mechanism's test
    puts the VTEP address where its mechanism needs it)."""
    hosts = {h: ns.add(h) for h in VTEPS}
    hv1, hv2 = hosts["hv1"], hosts["hv2"]
    for link in ("und", "phys"):  # made inside hv1, one end moved to hv2
        sh("ip", "-n", hv1, "link", "add", link, "type", "veth", "peer", "name", link,
           "netns", hv2)
    for ns_name in hosts.values():
        for link in ("und", "phys"):
            sh("ip", "-n", ns_name, "link", "set", link, "mtu", "1500", "up")
    return hosts


@pytest.fixture
def hypervisors() -> Iterator[Hypervisors]:
    ns = Namespaces()
    try:
        hosts = wired_hosts(ns)
        for host, ns_name in hosts.items():
            sh("ip", "-n", ns_name, "addr", "add", f"{VTEPS[host]}/24", "dev", "und")
        yield Hypervisors(ns, hosts)
    finally:
        ns.remove_all()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Services]:
    with segments_cloud(tmp_path, f"sqlite:///{tmp_path / 'haven.db'}",
                        network_vlan_ranges=["physnet1:100:199"]) as services:
        yield services


def reaches(guest: str, address: str, size: int = 56, attempts: int = 5) -> bool:
    """A ping (DF set) answered, in at most ``attempts`` tries of 3 echoes: counts, not
    clocks, so a slow machine only makes it slower."""
    for _ in range(attempts):
        done = sh("ip", "netns", "exec", guest, "ping", "-n", "-q", "-M", "do", "-s",
                  str(size), "-c", "3", "-i", "0.2", "-W", "1", address, check=False)
        if done.returncode == 0:
            return True
    return False


def unreachable(guest: str, address: str, size: int = 56) -> bool:
    return not reaches(guest, address, size, attempts=1)


def network(services: Services, token: str | None = None, **provider: object) -> dict:
    made = services.call("POST", "network", "/v2.0/networks", token,
                         json={"network": {"name": "n", **provider}})
    assert made.status_code == 201, made.text
    return made.json()["network"]


def bound_port(services: Services, net: dict, host: str) -> dict[str, object]:
    made = services.call("POST", "network", "/v2.0/ports", json={"port": {
        "network_id": net["id"], "binding:host_id": host, "device_owner": "compute:nova"}})
    assert made.status_code == 201, made.text
    return made.json()["port"]


def sync_all(services: Services, hvs: Hypervisors) -> None:
    """Each hypervisor's agent: register its VTEP, read its state, converge; a second
    sync on the converged host plans nothing."""
    for host in hvs.hosts:  # every VTEP known before anyone's entries are programmed
        services.db.run_in_transaction(lambda s, h=host: register_vtep(s, h, VTEPS[h]))
    for host in hvs.hosts:
        driver = hvs.driver(host)
        converge(services.db, host, VTEPS[host], driver)
        assert converge(services.db, host, VTEPS[host], driver).commands == (), host


def two_tenants(services: Services, hvs: Hypervisors, **provider_a: object
                ) -> dict[str, str]:
    """Tenant A's and tenant B's guests, one of each on each hypervisor, all in one
    IP subnet (so only the segments keep them apart)."""
    if provider_a:
        net_a = network(services, **provider_a)
        provider_b = {**provider_a, "provider:segmentation_id":
                      int(provider_a["provider:segmentation_id"]) + 1}  # type: ignore[call-overload]
        net_b = network(services, **provider_b)
    else:
        net_a = network(services, services.member("ta", "ta-user"))
        net_b = network(services, services.member("tb", "tb-user"))
    guests = {}
    for name, net, host, address in (("a1", net_a, "hv1", "10.0.0.11"),
                                     ("a2", net_a, "hv2", "10.0.0.12"),
                                     ("b1", net_b, "hv1", "10.0.0.21"),
                                     ("b2", net_b, "hv2", "10.0.0.22")):
        guests[name] = hvs.guest(host, bound_port(services, net, host), address)
    sync_all(services, hvs)
    return guests


def assert_isolated(g: dict[str, str]) -> None:
    assert reaches(g["a1"], "10.0.0.12"), "tenant A across hypervisors"
    assert reaches(g["b2"], "10.0.0.21"), "tenant B across hypervisors"
    for guest in ("b1", "b2"):
        for address in ("10.0.0.11", "10.0.0.12"):
            assert unreachable(g[guest], address), f"{guest} reached tenant A's {address}"
    assert unreachable(g["a2"], "10.0.0.21") and unreachable(g["a1"], "10.0.0.22")


def test_vxlan_tenants_reach_their_own_and_never_the_other(
        cloud: Services, hypervisors: Hypervisors) -> None:
    guests = two_tenants(cloud, hypervisors)
    assert_isolated(guests)
    # the MTU: 1500 - 50 on every device; a DF ping of exactly 1450 bytes passes,
    # one byte more does not (the guest itself would send it: its eth0 is at 1500)
    links = IpRoute2(hypervisors.hosts["hv1"]).observe().links
    ours = [link for name, link in links.items()
            if name.startswith(("brq", "vxlan-", "tap"))]
    assert len(ours) == 6 and {link.mtu for link in ours} == {1450}, ours
    assert reaches(guests["a1"], "10.0.0.12", size=1450 - 28)
    assert unreachable(guests["a1"], "10.0.0.12", size=1450 - 28 + 1)
    assert reaches(guests["a1"], "10.0.0.12")  # and nothing got stuck


def test_a_deleted_port_is_unplugged_and_its_network_removed(
        cloud: Services, hypervisors: Hypervisors) -> None:
    guests = two_tenants(cloud, hypervisors)
    ports = cloud.call("GET", "network", "/v2.0/ports?binding:host_id=hv2").json()["ports"]
    for port in ports:
        assert cloud.call("DELETE", "network", f"/v2.0/ports/{port['id']}").status_code == 204
    sync_all(cloud, hypervisors)
    assert unreachable(guests["a1"], "10.0.0.12")
    left = IpRoute2(hypervisors.hosts["hv2"]).observe()
    assert not [n for n in left.links if n.startswith(("brq", "vxlan-"))], left.links
    assert not [link for link in left.links.values() if link.master], left.links
    hv1 = IpRoute2(hypervisors.hosts["hv1"]).observe()
    assert not hv1.fdb, hv1.fdb  # nobody left to flood to


def kernel_has_vlan(hvs: Hypervisors) -> bool:
    hv = hvs.hosts["hv1"]
    done = sh("ip", "-n", hv, "link", "add", "link", "phys", "name", "probe.4094", "type",
              "vlan", "id", "4094", check=False)
    sh("ip", "-n", hv, "link", "del", "probe.4094", check=False)
    return done.returncode == 0


@pytest.mark.kernel_vlan
def test_vlan_tenants_on_a_shared_physical_link(cloud: Services,
                                                 hypervisors: Hypervisors) -> None:
    """Run with ``-m kernel_vlan`` on a kernel with 802.1Q (the default run leaves it
    out: the machine Haven is developed on has none); asked for without it, it fails."""
    if not kernel_has_vlan(hypervisors):
        pytest.fail("this kernel has no 802.1Q (no vlan devices, no loadable modules): "
                    "the VLAN data path cannot be tested here")
    guests = two_tenants(cloud, hypervisors, **{
        "provider:network_type": "vlan", "provider:physical_network": "physnet1",
        "provider:segmentation_id": 150})
    assert_isolated(guests)
    assert reaches(guests["a1"], "10.0.0.12", size=1500 - 28)


def flat_network_rides_the_physical_link(cloud: Services, hvs: Hypervisors,
                                         attached: Callable[[str], bool],
                                         released: Callable[[str], bool]) -> None:
    """The flat network's guests meet over the shared physical link; a VXLAN tenant
    in the same IP subnet does not reach them; deleting the flat network's ports
    releases the physical interface, never deletes it. ``attached(host)`` and
    ``released(host)`` read the physical interface in the mechanism's terms."""
    flat = network(cloud, **{"provider:network_type": "flat",
                             "provider:physical_network": "physnet1"})
    tenant = network(cloud, cloud.member("tf", "tf-user"))
    guests = {name: hvs.guest(host, bound_port(cloud, net, host), address)
              for name, net, host, address in (("f1", flat, "hv1", "10.0.0.11"),
                                                ("f2", flat, "hv2", "10.0.0.12"),
                                                ("t1", tenant, "hv1", "10.0.0.21"),
                                                ("t2", tenant, "hv2", "10.0.0.22"))}
    sync_all(cloud, hvs)
    assert reaches(guests["f1"], "10.0.0.12", size=1500 - 28)
    assert reaches(guests["t1"], "10.0.0.22")
    for address in ("10.0.0.11", "10.0.0.12"):
        assert unreachable(guests["t1"], address) and unreachable(guests["t2"], address)
    for host in hvs.hosts:
        assert attached(host), host
    ports = cloud.call("GET", "network", f"/v2.0/ports?network_id={flat['id']}").json()
    for port in ports["ports"]:
        assert cloud.call("DELETE", "network", f"/v2.0/ports/{port['id']}").status_code == 204
    sync_all(cloud, hvs)
    for host in hvs.hosts:
        assert released(host), host
    assert reaches(guests["t1"], "10.0.0.22")  # the other network is untouched


def test_a_flat_network_rides_the_physical_link_itself(cloud: Services,
                                                       hypervisors: Hypervisors) -> None:
    def phys(host: str) -> Link:
        return IpRoute2(hypervisors.hosts[host]).observe().links["phys"]

    def attached(host: str) -> bool:  # in the network's bridge, the underlay's MTU kept
        link = phys(host)
        return (link.master or "").startswith("brq") and link.mtu == 1500

    flat_network_rides_the_physical_link(
        cloud, hypervisors, attached,
        released=lambda h: phys(h).master is None and phys(h).up)


def test_sync_repairs_a_host_that_drifted(cloud: Services, hypervisors: Hypervisors) -> None:
    """What an agent finds after a restart or a hand's mistake: a tap off its bridge, a
    foreign forwarding entry, a wrong MTU, a whole network's bridge gone. One sync
    puts it back and removes the stray entry; the next plans nothing."""
    guests = two_tenants(cloud, hypervisors)
    hv1 = hypervisors.hosts["hv1"]
    links = IpRoute2(hv1).observe().links
    vxlans = sorted(n for n in links if n.startswith("vxlan-"))
    taps = sorted(n for n in links if n.startswith("tap"))
    bridges = sorted(n for n in links if n.startswith("brq"))
    sh("ip", "-n", hv1, "link", "set", taps[0], "nomaster")
    sh("bridge", "-n", hv1, "fdb", "append", "00:00:00:00:00:00", "dev", vxlans[0], "dst",
       "198.51.100.99")
    sh("ip", "-n", hv1, "link", "set", vxlans[0], "mtu", "1400")
    sh("ip", "-n", hv1, "link", "del", bridges[1])
    sync_all(cloud, hypervisors)  # asserts the second sync plans nothing
    observed = IpRoute2(hv1).observe()
    assert "198.51.100.99" not in {e.dst for e in observed.fdb}
    assert {observed.links[n].mtu for n in (*vxlans, *taps, *bridges)} == {1450}
    assert_isolated(guests)

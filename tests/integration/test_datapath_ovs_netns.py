"""The Open vSwitch data path on real devices: the Linux bridge module's connectivity
tests (tests/integration/test_datapath_netns.py, whose helpers this reuses) against
:class:`OpenVSwitchDriver`, which plugs each tap into a Linux bridge of its own
(``qbr``) joined to br-int by a veth (``qvb``/``qvo``): hybrid plugging.

Each fake hypervisor is a network namespace running its own ovsdb-server and
ovs-vswitchd (tests/integration/ovs_switch.py) with the userspace datapath
(``netdev``: the machine has no openvswitch kernel module). Nothing is made in the
machine's own namespace and no packet leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.common.hostnet import tap_name
from core.network.agent.hybrid import qbr_name, qvb_name, qvo_name
from core.network.agent.iproute import IpRoute2
from core.network.agent.openvswitch import OvsHostConfig, tunnel_port_name
from core.network.agent.ovsctl import OpenVSwitchDriver
from tests.conftest import Services
from tests.integration.ovs_switch import Switch, have_ovs
from tests.integration.segments_cloud import segments_cloud
from tests.integration.test_datapath_netns import (
    PHYSNET,
    VTEPS,
    Hypervisors,
    Namespaces,
    assert_isolated,
    bound_port,
    flat_network_rides_the_physical_link,
    network,
    reaches,
    sh,
    sync_all,
    two_tenants,
    unreachable,
    wired_hosts,
)
from tests.integration.wire_frames import WireCapture, ethernet, send_frames

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not have_ovs(),
    reason="needs root, iproute2 and Open vSwitch (appliance/setup.sh installs it)")

HYBRID = ("qbr", "qvb", "qvo")


@dataclass
class OvsHypervisors(Hypervisors):
    switches: dict[str, Switch]

    def driver(self, host: str) -> OpenVSwitchDriver:  # type: ignore[override]
        return OpenVSwitchDriver(OvsHostConfig(VTEPS[host], PHYSNET, "netdev"),
                                 self.switches[host].ctl())

    def hybrid_links(self, host: str) -> dict[str, str | None]:
        """The qbr bridges and qvb/qvo veths on ``host``, with each one's master."""
        links = IpRoute2(self.hosts[host]).observe().links
        return {n: link.master for n, link in links.items() if n.startswith(HYBRID)}


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Services]:
    with segments_cloud(tmp_path, f"sqlite:///{tmp_path / 'haven.db'}",
                        network_vlan_ranges=["physnet1:100:199"]) as services:
        yield services


@pytest.fixture
def hypervisors() -> Iterator[OvsHypervisors]:
    ns = Namespaces()
    base = Path(tempfile.mkdtemp(prefix="hovs-"))  # short: unix socket paths
    switches: dict[str, Switch] = {}
    try:
        hosts = wired_hosts(ns)
        for host, ns_name in hosts.items():
            rundir = base / host
            rundir.mkdir()
            switch = switches[host] = Switch(ns_name, rundir)
            switch.start()
            switch.underlay("und", VTEPS[host])
        yield OvsHypervisors(ns, hosts, switches)
    finally:
        for switch in switches.values():
            switch.stop()
        ns.remove_all()
        shutil.rmtree(base, ignore_errors=True)


def test_vxlan_tenants_reach_their_own_and_never_the_other(
        cloud: Services, hypervisors: OvsHypervisors) -> None:
    guests = two_tenants(cloud, hypervisors)
    assert_isolated(guests)
    ports = cloud.call("GET", "network", "/v2.0/ports?binding:host_id=hv1").json()["ports"]
    ids = [str(p["id"]) for p in ports]
    observed = hypervisors.switches["hv1"].ctl().observe()
    # each tap in its own Linux bridge with the bridge's veth end; the other end on
    # br-int, tagged, with the MTU and the external ids Neutron's agent reads
    links = IpRoute2(hypervisors.hosts["hv1"]).observe().links
    for port in ports:
        pid = str(port["id"])
        assert links[tap_name(pid)].master == qbr_name(pid)
        assert links[qvb_name(pid)].master == qbr_name(pid)
        assert {links[n].mtu for n in (tap_name(pid), qbr_name(pid), qvb_name(pid),
                                       qvo_name(pid))} == {1450}
        assert dict(observed.ports[qvo_name(pid)].iface_external_ids) == {
            "iface-id": pid, "iface-status": "active",
            "attached-mac": str(port["mac_address"])}
    qvos = [observed.ports[qvo_name(i)] for i in ids]
    assert {p.mtu_request for p in qvos} == {1450}, qvos
    assert len({p.tag for p in qvos}) == 2  # a local tag per network
    assert set(observed.ports) == {"br-int", *(p.name for p in qvos),
                                   tunnel_port_name(VTEPS["hv2"])}
    assert reaches(guests["a1"], "10.0.0.12", size=1450 - 28)
    assert unreachable(guests["a1"], "10.0.0.12", size=1450 - 28 + 1)
    assert reaches(guests["a1"], "10.0.0.12")


def test_a_deleted_port_is_unplugged_and_its_network_removed(
        cloud: Services, hypervisors: OvsHypervisors) -> None:
    guests = two_tenants(cloud, hypervisors)
    ports = cloud.call("GET", "network", "/v2.0/ports?binding:host_id=hv2").json()["ports"]
    assert len(hypervisors.hybrid_links("hv2")) == 3 * len(ports)
    for port in ports:
        assert cloud.call("DELETE", "network", f"/v2.0/ports/{port['id']}").status_code == 204
    sync_all(cloud, hypervisors)
    assert unreachable(guests["a1"], "10.0.0.12")
    hv2 = hypervisors.switches["hv2"].ctl().observe()
    assert set(hv2.ports) == {"br-int"}, hv2.ports
    assert [f.actions for f in hv2.flows] == ["drop"], hv2.flows
    assert hypervisors.hybrid_links("hv2") == {}  # the port's bridge and veth are gone
    hv1 = hypervisors.switches["hv1"].ctl().observe()
    assert not [n for n in hv1.ports if n.startswith("vx")], hv1.ports  # nobody to flood to
    assert not [f for f in hv1.flows if "TUN_ID" in f.actions or "tun_id" in str(f.match)]
    # the taps on hv2 are released, never deleted: they are the hypervisor's
    links = IpRoute2(hypervisors.hosts["hv2"]).observe().links
    for port in ports:
        assert links[tap_name(str(port["id"]))].master is None


def test_a_flat_network_rides_the_physical_link_itself(
        cloud: Services, hypervisors: OvsHypervisors) -> None:
    def observed(host: str) -> tuple[set[str], frozenset[str]]:
        switch = hypervisors.switches[host].ctl().observe()
        return set(switch.ports), switch.devices

    flat_network_rides_the_physical_link(
        cloud, hypervisors, attached=lambda h: "phys" in observed(h)[0],
        released=lambda h: "phys" not in observed(h)[0] and "phys" in observed(h)[1])


def test_sync_repairs_a_host_that_drifted(cloud: Services,
                                          hypervisors: OvsHypervisors) -> None:
    """A port's Linux bridge deleted by hand, another's veth deleted, a foreign flow
    that would join the two tenants, a wrong MTU, a tunnel port gone: one sync puts
    it back, the next plans nothing."""
    guests = two_tenants(cloud, hypervisors)
    switch, hv1 = hypervisors.switches["hv1"], hypervisors.hosts["hv1"]
    ports = sorted(str(p["id"]) for p in cloud.call(
        "GET", "network", "/v2.0/ports?binding:host_id=hv1").json()["ports"])
    before = hypervisors.hybrid_links("hv1")
    observed = switch.ctl().observe()
    tags = sorted({observed.ports[qvo_name(p)].tag or 0 for p in ports})
    sh("ip", "-n", hv1, "link", "del", qbr_name(ports[0]))
    sh("ip", "-n", hv1, "link", "del", qvo_name(ports[1]))
    switch.vsctl("set", "interface", qvo_name(ports[0]), "mtu_request=1400")
    switch.vsctl("del-port", "br-int", tunnel_port_name(VTEPS["hv2"]))
    switch.ofctl("add-flow", "br-int",
                 f"table=1,priority=30,reg0={tags[0]:#x} actions=load:{tags[1]:#x}"
                 "->NXM_NX_REG0[],resubmit(,2)")
    assert qbr_name(ports[0]) not in hypervisors.hybrid_links("hv1")
    sync_all(cloud, hypervisors)  # asserts the second sync plans nothing
    assert hypervisors.hybrid_links("hv1") == before
    repaired = switch.ctl().observe()
    assert {repaired.ports[qvo_name(p)].mtu_request for p in ports} == {1450}
    assert not [f for f in repaired.flows if f.priority == 30]
    assert sorted({repaired.ports[qvo_name(p)].tag or 0 for p in ports}) == tags
    assert_isolated(guests)


VLAN_A = {"provider:network_type": "vlan", "provider:physical_network": "physnet1",
          "provider:segmentation_id": 150}  # two_tenants gives B the next id, 151


def guest_mac(guest: str) -> str:
    return str(json.loads(sh("ip", "-n", guest, "-j", "link", "show", "eth0").stdout)[0][
        "address"])


def test_vlan_tenants_share_the_physical_link_each_with_its_tag(
        cloud: Services, hypervisors: OvsHypervisors) -> None:
    """Two VLAN networks on one physical network: each reaches its own guests across
    the hosts and never the other's, and on the "physical" link between the hosts
    every guest frame carries its network's 802.1Q tag (read off the wire by a raw
    socket in hv2, not through Open vSwitch); no kernel 802.1Q module is used."""
    guests = two_tenants(cloud, hypervisors, **VLAN_A)
    with WireCapture(hypervisors.hosts["hv2"], "phys") as wire:
        assert_isolated(guests)
        assert reaches(guests["a1"], "10.0.0.12", size=1500 - 28)  # the full MTU, tagged
        assert reaches(guests["b1"], "10.0.0.22")
    vids = {"a1": 150, "a2": 150, "b1": 151, "b2": 151}
    for name, vid in vids.items():
        mac = guest_mac(guests[name])
        seen = {v: n for (m, v), n in wire.frames.items() if m == mac}
        assert set(seen) == {vid}, (name, seen)  # every frame of the guest, its tag only
    for host in hypervisors.hosts:
        observed = hypervisors.switches[host].ctl().observe()
        phys = observed.ports["phys"]  # one trunk port for the physical network
        assert phys.tag is None and dict(phys.external_ids) == {"haven-physnet": "physnet1"}
        matches = {f.match for f in observed.flows if "in_port=phys" in f.match}
        assert matches == {("dl_vlan=150", "in_port=phys"), ("dl_vlan=151", "in_port=phys")}
        qvos = [p for n, p in observed.ports.items() if n.startswith("qvo")]
        assert len({p.tag for p in qvos}) == 2 and {p.mtu_request for p in qvos} == {1500}


def test_sync_repairs_a_vlan_host_that_drifted(cloud: Services,
                                               hypervisors: OvsHypervisors) -> None:
    """hv1's flood of network A retagged by hand with B's VLAN id (A's frames would
    land in B), hv2's physical port taken off br-int and its VLAN 150 flow gone: A is
    cut off; one sync puts back the tags, the port and the flows, the next plans
    nothing, and the tenants are apart again."""
    guests = two_tenants(cloud, hypervisors, **VLAN_A)
    one, two = hypervisors.switches["hv1"], hypervisors.switches["hv2"]
    flood = next(f for f in one.ctl().observe().flows
                 if f.table == 1 and "mod_vlan_vid:150" in f.actions)
    one.ofctl("add-flow", "br-int", f"{flood.match_text()} actions="
              + flood.actions.replace("mod_vlan_vid:150", "mod_vlan_vid:151"))
    two.ofctl("--strict", "del-flows", "br-int", "table=0,priority=10,in_port=phys,dl_vlan=150")
    two.vsctl("del-port", "br-int", "phys")
    assert unreachable(guests["a1"], "10.0.0.12")
    sync_all(cloud, hypervisors)  # asserts the second sync plans nothing
    repaired = {f.key: f.actions for f in one.ctl().observe().flows}
    assert "mod_vlan_vid:150" in repaired[flood.key]
    assert "phys" in two.ctl().observe().ports
    assert_isolated(guests)


def test_a_flat_guest_cannot_put_a_vlan_networks_id_on_the_wire(
        cloud: Services, hypervisors: OvsHypervisors) -> None:
    """The flat network and VLAN network B share the physical network. A guest of the
    flat network sends broadcasts tagged with B's VLAN id, made by hand (its ports are
    access ports, as Neutron's are): none reaches the wire or B's guest, while its
    untagged ones do cross."""
    flat = network(cloud, **{"provider:network_type": "flat",
                             "provider:physical_network": "physnet1"})
    vlan_b = network(cloud, **{**VLAN_A, "provider:segmentation_id": 151})
    guests = {name: hypervisors.guest(host, bound_port(cloud, net, host), address)
              for name, net, host, address in (("f1", flat, "hv1", "10.0.0.11"),
                                                ("f2", flat, "hv2", "10.0.0.12"),
                                                ("b1", vlan_b, "hv1", "10.0.0.21"),
                                                ("b2", vlan_b, "hv2", "10.0.0.22"))}
    sync_all(cloud, hypervisors)
    assert reaches(guests["f1"], "10.0.0.12") and reaches(guests["b1"], "10.0.0.22")
    mac = guest_mac(guests["f1"])
    with WireCapture(hypervisors.hosts["hv2"], "phys") as wire, \
            WireCapture(guests["b2"], "eth0") as b2, WireCapture(guests["f2"], "eth0") as f2:
        send_frames(guests["f1"], "eth0", [ethernet(mac, 151)] * 5 + [ethernet(mac, None)] * 5)
        assert reaches(guests["f1"], "10.0.0.12")  # the untagged ones are through by now
        assert reaches(guests["b1"], "10.0.0.22")
    assert wire.frames.get((mac, None), 0) >= 5, wire.frames
    assert (mac, 151) not in wire.frames, wire.frames
    assert not [k for k in b2.frames if k[0] == mac], b2.frames
    assert f2.frames.get((mac, None), 0) >= 5, f2.frames

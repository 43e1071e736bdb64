"""The Open vSwitch planner: from (desired, observed) to ``ovs-vsctl``/``ovs-ofctl``.

Pure: no switch is touched here (tests/integration/test_datapath_ovs_netns.py runs
the same plans on userspace Open vSwitch in namespaces)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from core.common.config import ConfigError, DataPathConfig, load_config
from core.network.agent.driver import HostState, LocalPort, NetworkSpec, RemotePort
from core.network.agent.mechanism import build_driver, ovs_datapath_type, ovs_host_config
from core.network.agent.openvswitch import (
    UNTAGGED,
    Flow,
    Observed,
    OvsHostConfig,
    OvsPort,
    PlanError,
    allocate_tags,
    desired_flows,
    desired_ports,
    parse_flow,
    plan,
    tunnel_port_name,
)
from core.network.agent.ovsctl import OpenVSwitchDriver

NET_A = "aaaaaaaa-1111-2222-3333-444444444444"
NET_B = "bbbbbbbb-1111-2222-3333-444444444444"
FLAT = "ffffffff-1111-2222-3333-444444444444"
CFG = OvsHostConfig("198.51.100.1", {"physnet1": "eth1"}, "netdev")
VX_A = NetworkSpec(NET_A, "vxlan", None, 100, 1450)
VX_B = NetworkSpec(NET_B, "vxlan", None, 101, 1450)
TAP_A = LocalPort("pa", NET_A, "fa:16:3e:00:00:01", "tappa")
TAP_B = LocalPort("pb", NET_B, "fa:16:3e:00:00:02", "tappb")
PEER = "198.51.100.2"
VX_PEER = tunnel_port_name(PEER)
REMOTE_A = RemotePort(NET_A, "fa:16:3e:00:00:0a", PEER)
BRIDGE = {"datapath_type": "netdev", "fail_mode": "secure"}


def two_tenants() -> HostState:
    return HostState("hv1", (VX_A, VX_B), (TAP_A, TAP_B),
                     (REMOTE_A, RemotePort(NET_B, "fa:16:3e:00:00:0b", PEER)))


def converge(desired: HostState, cfg: OvsHostConfig = CFG,
             devices: frozenset[str] = frozenset({"tappa", "tappb", "eth1"})) -> Observed:
    """What a switch that ran every plan looks like: the desired ports (with OpenFlow
    numbers) and flows, built by the planner's own pieces."""
    empty = Observed(BRIDGE, {}, frozenset(), devices)
    tags = allocate_tags(desired, empty)
    ports = {n: replace(p, ofport=i + 1)
             for i, (n, p) in enumerate(sorted(desired_ports(desired, empty, cfg,
                                                              tags).items()))}
    ports["br-int"] = OvsPort("br-int", type="internal", ofport=65534)
    opened = Observed(BRIDGE, ports, frozenset(), devices)
    return replace(opened, flows=desired_flows(desired, ports, opened, tags))


def text(commands: list[tuple[str, ...]]) -> list[str]:
    return [" ".join(c) for c in commands]


def test_a_host_without_br_int_gets_it_first() -> None:
    assert text(plan(two_tenants(), Observed(None, devices=frozenset({"tappa"})), CFG)) == [
        "ovs-vsctl add-br br-int -- set bridge br-int datapath_type=netdev fail_mode=secure"]


def test_ports_come_before_the_flows_that_name_them() -> None:
    commands = text(plan(two_tenants(), Observed(BRIDGE, {}, frozenset(),
                                                 frozenset({"tappa", "tappb"})), CFG))
    assert 'ovs-vsctl add-port br-int tappa -- set port tappa tag=1 external_ids=' \
           '{"haven-net"="' + NET_A + '","haven-port"="pa"} -- set interface tappa ' \
           'mtu_request=1450 external_ids={"attached-mac"="fa:16:3e:00:00:01",' \
           '"iface-id"="pa","iface-status"="active"}' in commands
    assert f'ovs-vsctl add-port br-int {VX_PEER} -- set port {VX_PEER} tag=[] ' \
           f'external_ids={{"haven-peer"="{PEER}"}} -- set interface {VX_PEER} type=vxlan ' \
           f'options={{"key"="flow","local_ip"="198.51.100.1","remote_ip"="{PEER}"}}' \
           in commands
    # no port has an OpenFlow number yet: only the default drop
    assert [c for c in commands if c.startswith("ovs-ofctl")] == [
        "ovs-ofctl add-flow br-int table=0,priority=0 actions=drop"]


def test_a_converged_host_gets_no_command() -> None:
    desired = two_tenants()
    assert plan(desired, converge(desired), CFG) == []


def test_each_network_keeps_its_tag_and_its_vni() -> None:
    desired = two_tenants()
    observed = converge(desired)
    tags = {p.external_ids["haven-net"]: p.tag for p in observed.ports.values()
            if "haven-net" in p.external_ids}
    assert tags == {NET_A: 1, NET_B: 2}
    flows = {(f.table, f.match): f.actions for f in observed.flows}
    # a frame from a tap is its network's, and a peer's frame is the network of its VNI
    assert flows[(0, ("in_port=tappa",))] == "load:0x1->NXM_NX_REG0[],resubmit(,1)"
    assert flows[(0, (f"in_port={VX_PEER}", "tun_id=0x65"))] == \
        "load:0x2->NXM_NX_REG0[],resubmit(,2)"
    # a network floods to its own taps and VNI only; from the tunnel, to its taps only
    assert flows[(1, ("reg0=0x1",))] == \
        f"output:tappa,load:0x64->NXM_NX_TUN_ID[],output:{VX_PEER}"
    assert flows[(2, ("reg0=0x2",))] == "output:tappb"
    assert flows[(1, ("dl_dst=fa:16:3e:00:00:0a", "reg0=0x1"))] == \
        f"load:0x64->NXM_NX_TUN_ID[],output:{VX_PEER}"
    # nothing maps one network's tag to another's
    for actions in flows.values():
        assert not ("tappa" in actions and "tappb" in actions), actions


def test_a_tag_survives_the_other_networks_leaving() -> None:
    """Tags are read back from the ports: B keeps 2 when A (tag 1) goes, and a new
    network takes the lowest free tag."""
    observed = converge(two_tenants())
    only_b = HostState("hv1", (VX_B, NetworkSpec("cccccccc-1", "vxlan", None, 102, 1450)),
                       (TAP_B, LocalPort("pc", "cccccccc-1", "fa:16:3e:00:00:03", "tappc")))
    assert allocate_tags(only_b, observed) == {NET_B: 2, "cccccccc-1": 1}


def test_stale_ports_and_flows_go_and_flows_go_first() -> None:
    observed = converge(two_tenants())
    commands = text(plan(HostState("hv1", (VX_B,), (TAP_B,)), observed, CFG))
    first_port = next(i for i, c in enumerate(commands) if c.startswith("ovs-vsctl"))
    assert all(c.startswith("ovs-ofctl --strict del-flows") for c in commands[:first_port])
    assert "ovs-vsctl del-port br-int tappa" in commands
    assert f"ovs-vsctl del-port br-int {VX_PEER}" in commands  # no peer left for B
    assert "ovs-ofctl --strict del-flows br-int table=0,priority=10,in_port=tappa" in commands


def test_drift_is_repaired() -> None:
    desired = two_tenants()
    observed = converge(desired)
    ports = dict(observed.ports)
    ports["tappa"] = replace(ports["tappa"], mtu_request=1400)
    ports["tapforeign"] = OvsPort("tapforeign", ofport=9)
    foreign = Flow(1, 30, ("reg0=0x1",), "load:0x2->NXM_NX_REG0[],resubmit(,2)")
    commands = text(plan(desired, replace(observed, ports=ports,
                                          flows=observed.flows | {foreign}), CFG))
    assert "ovs-vsctl set interface tappa mtu_request=1450" in commands
    assert "ovs-vsctl del-port br-int tapforeign" in commands
    assert "ovs-ofctl --strict del-flows br-int table=1,priority=30,reg0=0x1" in commands


def test_a_tag_changed_by_hand_is_adopted_and_never_shared() -> None:
    """The tag is read back from the ports: a hand-changed tag becomes the network's
    (its flows follow); a tag two networks' ports claim stays with one of them."""
    desired = two_tenants()
    observed = converge(desired)
    ports = dict(observed.ports)
    ports["tappa"] = replace(ports["tappa"], tag=7)
    assert allocate_tags(desired, replace(observed, ports=ports)) == {NET_A: 7, NET_B: 2}
    ports["tappb"] = replace(ports["tappb"], tag=7)
    assert allocate_tags(desired, replace(observed, ports=ports)) == {NET_A: 7, NET_B: 1}
    commands = text(plan(desired, replace(observed, ports=ports), CFG))
    assert "ovs-vsctl set port tappb tag=1" in commands


def test_a_tap_the_hypervisor_has_not_made_waits() -> None:
    desired = two_tenants()
    observed = replace(converge(desired), devices=frozenset({"tappb"}))
    ports = desired_ports(desired, observed, CFG, {NET_A: 1, NET_B: 2})
    assert "tappa" not in ports and "tappb" in ports


def test_a_flat_network_uses_the_physical_interface_untagged() -> None:
    flat = NetworkSpec(FLAT, "flat", "physnet1", None, 1500)
    desired = HostState("hv1", (flat,), (LocalPort("pf", FLAT, "fa:16:3e:00:00:0f",
                                                   "tappa"),))
    observed = converge(desired)
    eth1 = observed.ports["eth1"]
    assert eth1.tag is None and eth1.mtu_request is None  # a trunk, the underlay's MTU
    assert dict(eth1.external_ids) == {"haven-physnet": "physnet1"}
    flows = {(f.table, f.match): f.actions for f in observed.flows}
    assert flows[(0, ("in_port=eth1", UNTAGGED))] == "load:0x1->NXM_NX_REG0[],resubmit(,2)"
    assert flows[(1, ("reg0=0x1",))] == "output:tappa,output:eth1"
    with pytest.raises(PlanError, match=r"eth1 of network .* is missing"):
        plan(desired, replace(observed, devices=frozenset({"tappa"})), CFG)


VLAN_A = NetworkSpec(NET_A, "vlan", "physnet1", 150, 1500)
VLAN_B = NetworkSpec(NET_B, "vlan", "physnet1", 151, 1500)


def test_vlan_networks_share_the_physical_port_each_with_its_id() -> None:
    """The VLAN id is pushed on the way out (after the taps' outputs, which stay
    untagged) and matched and stripped on the way in; the flat network on the same
    physical network takes only untagged frames."""
    flat = NetworkSpec(FLAT, "flat", "physnet1", None, 1500)
    desired = HostState("hv1", (VLAN_A, VLAN_B, flat), (
        TAP_A, TAP_B, LocalPort("pf", FLAT, "fa:16:3e:00:00:0f", "tappf")))
    observed = converge(desired, devices=frozenset({"tappa", "tappb", "tappf", "eth1"}))
    assert plan(desired, observed, CFG) == []
    assert [n for n, p in observed.ports.items() if "haven-physnet" in p.external_ids] == [
        "eth1"]
    flows = {(f.table, f.match): f.actions for f in observed.flows}
    assert flows[(0, ("dl_vlan=150", "in_port=eth1"))] == \
        "strip_vlan,load:0x1->NXM_NX_REG0[],resubmit(,2)"
    assert flows[(0, ("dl_vlan=151", "in_port=eth1"))] == \
        "strip_vlan,load:0x2->NXM_NX_REG0[],resubmit(,2)"
    assert flows[(0, ("in_port=eth1", UNTAGGED))] == "load:0x3->NXM_NX_REG0[],resubmit(,2)"
    assert flows[(1, ("reg0=0x1",))] == "output:tappa,mod_vlan_vid:150,output:eth1"
    assert flows[(1, ("reg0=0x2",))] == "output:tappb,mod_vlan_vid:151,output:eth1"
    assert flows[(2, ("reg0=0x1",))] == "output:tappa"
    # a guest's own 802.1Q frame is dropped: a flat guest cannot put VLAN 151 on the wire
    for tap in ("tappa", "tappb", "tappf"):
        assert (0, (f"in_port={tap}",)) not in flows
        assert (0, (f"in_port={tap}", UNTAGGED)) in flows


def test_a_vxlan_guest_keeps_its_own_vlans() -> None:
    """Inside a VNI a guest's tag meets no other network: its frames are taken as
    they are (as before VLAN networks existed)."""
    flows = {(f.table, f.match) for f in converge(two_tenants()).flows}
    assert (0, ("in_port=tappa",)) in flows


def test_two_networks_on_one_segment_are_refused() -> None:
    twin = NetworkSpec(NET_B, "vlan", "physnet1", 150, 1500)
    with pytest.raises(PlanError, match="share physical network 'physnet1' VLAN 150"):
        plan(HostState("hv1", (VLAN_A, twin), (TAP_A, TAP_B)),
             Observed(BRIDGE, devices=frozenset({"tappa", "tappb", "eth1"})), CFG)


@pytest.mark.parametrize("net, message", [
    (NetworkSpec(NET_A, "vlan", "physnet9", 150, 1500), "no interface for physical network"),
    (NetworkSpec(NET_A, "vlan", "physnet1", None, 1500), "vlan without a VLAN id"),
    (NetworkSpec(NET_A, "gre", None, 5, 1500), "flat, vlan and vxlan networks, not 'gre'"),
    (NetworkSpec(NET_A, "flat", "physnet9", None, 1500), "no interface for physical network"),
    (NetworkSpec(NET_A, "vxlan", None, None, 1450), "without a VNI"),
])
def test_what_cannot_be_laid_out_is_refused(net: NetworkSpec, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan(HostState("hv1", (net,)), Observed(BRIDGE), CFG)


def test_vxlan_without_a_vtep_is_refused() -> None:
    with pytest.raises(PlanError, match="no VTEP address"):
        plan(HostState("hv1", (VX_A,)), Observed(BRIDGE), OvsHostConfig())


def test_the_dump_is_read_in_the_planners_terms() -> None:
    line = (' table=1, priority=20,reg0=0x3,dl_dst=fa:16:3e:00:00:01 '
            'actions=output:"tap3b692256-09"')
    assert parse_flow(line) == Flow(1, 20, ("dl_dst=fa:16:3e:00:00:01", "reg0=0x3"),
                                    "output:tap3b692256-09")
    assert parse_flow(" priority=0 actions=drop") == Flow(0, 0, (), "drop")
    assert tunnel_port_name("198.51.100.2") == "vxc6336402"
    assert len(tunnel_port_name("2001:db8::1")) <= 15


def test_the_mechanism_is_chosen_by_configuration(tmp_path: Path) -> None:
    assert isinstance(build_driver(DataPathConfig(mechanism="openvswitch")),
                      OpenVSwitchDriver)
    assert not isinstance(build_driver(DataPathConfig()), OpenVSwitchDriver)
    assert ovs_datapath_type("auto", tmp_path / "absent") == "netdev"
    (tmp_path / "openvswitch").mkdir()
    assert ovs_datapath_type("auto", tmp_path / "openvswitch") == "system"
    assert ovs_datapath_type("netdev", tmp_path / "openvswitch") == "netdev"
    cfg = load_config(overrides={"network.datapath.mechanism": "openvswitch",
                                 "network.datapath.local_ip": "198.51.100.7",
                                 "network.datapath.ovs_datapath_type": "system"})
    assert ovs_host_config(cfg.network.datapath) == OvsHostConfig("198.51.100.7", {},
                                                                  "system")
    with pytest.raises(ConfigError, match=r"network\.datapath\.mechanism"):
        load_config(overrides={"network.datapath.mechanism": "macvtap"})


def test_an_instances_port_carries_the_ids_neutrons_agent_reads() -> None:
    """os-vif's ``external_ids`` on the interface: a hand-edited one is put back."""
    desired = HostState("hv1", (VX_A,), (replace(TAP_A, device_id="vm-1"),))
    observed = converge(desired, devices=frozenset({"tappa"}))
    assert dict(observed.ports["tappa"].iface_external_ids) == {
        "iface-id": "pa", "iface-status": "active", "attached-mac": "fa:16:3e:00:00:01",
        "vm-uuid": "vm-1"}
    ports = dict(observed.ports)
    ports["tappa"] = replace(ports["tappa"], iface_external_ids={"iface-id": "other"})
    assert text(plan(desired, replace(observed, ports=ports), CFG)) == [
        'ovs-vsctl set interface tappa external_ids={"attached-mac"="fa:16:3e:00:00:01",'
        '"iface-id"="pa","iface-status"="active","vm-uuid"="vm-1"}']


def test_a_flat_hosts_access_port_becomes_the_physical_networks_trunk() -> None:
    """A host converged before VLAN networks had the flat network's interface as an
    access port of that network: one sync makes it the physical network's trunk."""
    flat = NetworkSpec(FLAT, "flat", "physnet1", None, 1500)
    desired = HostState("hv1", (flat,), (LocalPort("pf", FLAT, "fa:16:3e:00:00:0f",
                                                   "tappa"),))
    observed = converge(desired)
    ports = dict(observed.ports)
    ports["eth1"] = replace(ports["eth1"], tag=1, external_ids={"haven-net": FLAT})
    assert text(plan(desired, replace(observed, ports=ports), CFG)) == [
        'ovs-vsctl set port eth1 tag=[] external_ids={"haven-physnet"="physnet1"}']

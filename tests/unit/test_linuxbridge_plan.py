"""The Linux bridge planner: from (desired, observed) to ``ip``/``bridge`` commands.

Pure: no host is touched here (tests/integration/test_datapath_netns.py runs the
same plans on real devices in namespaces)."""

from __future__ import annotations

import pytest

from core.network.agent.driver import HostState, LocalPort, NetworkSpec, RemotePort
from core.network.agent.linuxbridge import (
    FdbEntry,
    HostConfig,
    Link,
    Observed,
    PlanError,
    plan,
)

NET_A = "aaaaaaaa-1111-2222-3333-444444444444"
NET_B = "bbbbbbbb-1111-2222-3333-444444444444"
CFG = HostConfig(local_vtep="198.51.100.1", physical_interfaces={"physnet1": "eth1"})
VX_A = NetworkSpec(NET_A, "vxlan", None, 100, 1450)
TAP = LocalPort("p1", NET_A, "fa:16:3e:00:00:01", "tapp1")


def state(*nets: NetworkSpec, ports: tuple[LocalPort, ...] = (),
          remote: tuple[RemotePort, ...] = ()) -> HostState:
    return HostState("hv1", nets, ports, remote)


def text(commands: list[tuple[str, ...]]) -> list[str]:
    return [" ".join(c) for c in commands]


def converged_vxlan() -> Observed:
    return Observed(
        {"brqaaaaaaaa-11": Link("brqaaaaaaaa-11", "bridge", mtu=1450, up=True),
         "vxlan-100": Link("vxlan-100", "vxlan", "brqaaaaaaaa-11", 1450, True, vni=100,
                           local="198.51.100.1", port=4789, learning=False),
         "tapp1": Link("tapp1", "tun", "brqaaaaaaaa-11", 1450, True),
         "eth0": Link("eth0", "veth", None, 1500, True)},
        frozenset({FdbEntry("vxlan-100", "00:00:00:00:00:00", "198.51.100.2"),
                   FdbEntry("vxlan-100", "fa:16:3e:00:00:02", "198.51.100.2")}))


REMOTE = (RemotePort(NET_A, "FA:16:3E:00:00:02", "198.51.100.2"),)


def test_an_empty_host_gets_bridge_vxlan_tap_mtu_and_forwarding_entries() -> None:
    observed = Observed({"tapp1": Link("tapp1", "tun", None, 1500, False)})
    assert text(plan(state(VX_A, ports=(TAP,), remote=REMOTE), observed, CFG)) == [
        "ip link add brqaaaaaaaa-11 type bridge",
        "ip link add vxlan-100 type vxlan id 100 local 198.51.100.1 dstport 4789 nolearning",
        "ip link set vxlan-100 master brqaaaaaaaa-11",
        "ip link set vxlan-100 mtu 1450",
        "ip link set vxlan-100 up",
        "ip link set tapp1 master brqaaaaaaaa-11",
        "ip link set tapp1 mtu 1450",
        "ip link set tapp1 up",
        "ip link set brqaaaaaaaa-11 mtu 1450",
        "ip link set brqaaaaaaaa-11 up",
        "bridge fdb append 00:00:00:00:00:00 dev vxlan-100 dst 198.51.100.2",
        "bridge fdb append fa:16:3e:00:00:02 dev vxlan-100 dst 198.51.100.2",
    ]


def test_a_converged_host_gets_no_command() -> None:
    assert plan(state(VX_A, ports=(TAP,), remote=REMOTE), converged_vxlan(), CFG) == []


def test_stale_devices_and_entries_are_removed_physical_interfaces_only_released() -> None:
    links = dict(converged_vxlan().links)
    links.update({
        "brqbbbbbbbb-11": Link("brqbbbbbbbb-11", "bridge", mtu=1500, up=True),
        "vxlan-200": Link("vxlan-200", "vxlan", "brqbbbbbbbb-11", 1450, True, vni=200),
        "tapgone": Link("tapgone", "tun", "brqbbbbbbbb-11", 1450, True),
        "eth1": Link("eth1", "veth", "brqbbbbbbbb-11", 1500, True),
        "docker0": Link("docker0", "bridge", None, 1500, True),  # not ours
        "eth2": Link("eth2", "veth", "docker0", 1500, True),
    })
    fdb = converged_vxlan().fdb | {FdbEntry("vxlan-100", "fa:16:3e:00:00:09", "198.51.100.3"),
                                   FdbEntry("vxlan-200", "00:00:00:00:00:00", "198.51.100.2")}
    assert text(plan(state(VX_A, ports=(TAP,), remote=REMOTE), Observed(links, fdb), CFG)) == [
        "bridge fdb del fa:16:3e:00:00:09 dev vxlan-100 dst 198.51.100.3",
        "ip link set eth1 nomaster",
        "ip link set tapgone nomaster",
        "ip link del vxlan-200",
        "ip link del brqbbbbbbbb-11",
    ]


def test_a_port_that_moved_host_gets_its_entry_moved() -> None:
    moved = (RemotePort(NET_A, "fa:16:3e:00:00:02", "198.51.100.3"),)
    assert text(plan(state(VX_A, ports=(TAP,), remote=moved), converged_vxlan(), CFG)) == [
        "bridge fdb del 00:00:00:00:00:00 dev vxlan-100 dst 198.51.100.2",
        "bridge fdb del fa:16:3e:00:00:02 dev vxlan-100 dst 198.51.100.2",
        "bridge fdb append 00:00:00:00:00:00 dev vxlan-100 dst 198.51.100.3",
        "bridge fdb append fa:16:3e:00:00:02 dev vxlan-100 dst 198.51.100.3",
    ]


def test_a_learning_vxlan_device_or_a_changed_vtep_is_made_again() -> None:
    links = dict(converged_vxlan().links)
    links["vxlan-100"] = Link("vxlan-100", "vxlan", "brqaaaaaaaa-11", 1450, True, vni=100,
                              local="198.51.100.1", port=4789, learning=True)
    commands = text(plan(state(VX_A, ports=(TAP,), remote=REMOTE),
                         Observed(links, converged_vxlan().fdb), CFG))
    assert commands[0] == "ip link del vxlan-100"
    assert "ip link add vxlan-100 type vxlan id 100 local 198.51.100.1 dstport 4789 " \
           "nolearning" in commands
    assert commands[-2:] == [  # the recreated device's entries are programmed again
        "bridge fdb append 00:00:00:00:00:00 dev vxlan-100 dst 198.51.100.2",
        "bridge fdb append fa:16:3e:00:00:02 dev vxlan-100 dst 198.51.100.2"]


def test_vlan_is_a_subinterface_and_flat_the_interface_itself() -> None:
    vlan = NetworkSpec(NET_A, "vlan", "physnet1", 101, 1500)
    flat = NetworkSpec(NET_B, "flat", "physnet1", None, 1500)
    observed = Observed({"eth1": Link("eth1", "veth", None, 1500, False)})
    commands = text(plan(state(vlan, flat), observed, CFG))
    assert commands == [
        "ip link add brqaaaaaaaa-11 type bridge",
        "ip link add link eth1 name eth1.101 type vlan id 101",
        "ip link set eth1.101 master brqaaaaaaaa-11",
        "ip link set eth1.101 mtu 1500",
        "ip link set eth1.101 up",
        "ip link set brqaaaaaaaa-11 mtu 1500",
        "ip link set brqaaaaaaaa-11 up",
        "ip link add brqbbbbbbbb-11 type bridge",
        "ip link set eth1 master brqbbbbbbbb-11",  # no MTU change on the physical one
        "ip link set eth1 up",
        "ip link set brqbbbbbbbb-11 mtu 1500",
        "ip link set brqbbbbbbbb-11 up",
    ]


def test_a_tap_the_hypervisor_has_not_made_is_left_for_the_next_sync() -> None:
    commands = text(plan(state(VX_A, ports=(TAP,)), Observed(), CFG))
    assert not [c for c in commands if "tapp1" in c]


@pytest.mark.parametrize(("desired", "observed", "cfg", "why"), [
    (state(VX_A), Observed(), HostConfig(), "no VTEP"),
    (state(NetworkSpec(NET_A, "vlan", "physnet9", 5, 1500)), Observed(), CFG,
     "physnet9"),
    (state(NetworkSpec(NET_A, "flat", "physnet1", None, 1500)), Observed(), CFG,
     "eth1 of network"),
    (state(VX_A), Observed({"brqaaaaaaaa-11": Link("brqaaaaaaaa-11", "veth")}), CFG,
     "not a bridge"),
    (state(NetworkSpec(NET_A, "gre", None, 5, 1500)), Observed(), CFG, "unknown type"),
])
def test_what_cannot_be_laid_out_is_refused_before_anything_runs(
        desired: HostState, observed: Observed, cfg: HostConfig, why: str) -> None:
    with pytest.raises(PlanError, match=why):
        plan(desired, observed, cfg)

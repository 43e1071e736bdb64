"""Hybrid plugging's Linux side: from (desired ports, the host's links) to ``ip`` commands.

Pure: no device is touched here (tests/integration/test_datapath_ovs_netns.py and
test_network_agent_netns.py run the same plans on real devices, with the filter)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from core.network.agent.driver import HostState, LocalPort, NetworkSpec
from core.network.agent.hybrid import (
    HybridPlan,
    HybridPlanError,
    ovs_view,
    plan,
    qbr_name,
    qvb_name,
    qvo_name,
)
from core.network.agent.linuxbridge import Link

NET = "aaaaaaaa-1111-2222-3333-444444444444"
PORT = LocalPort("0123456789abcdef", NET, "fa:16:3e:00:00:01", "tap0123456789a", "vm-1")
QBR, QVB, QVO = qbr_name(PORT.port_id), qvb_name(PORT.port_id), qvo_name(PORT.port_id)
DESIRED = HostState("hv1", (NetworkSpec(NET, "vxlan", None, 100, 1450),), (PORT,))
TAP = Link(PORT.device, "veth", mtu=1500, up=False, parent="eth0")


def converged() -> dict[str, Link]:
    return {QBR: Link(QBR, "bridge", mtu=1450, up=True),
            QVB: Link(QVB, "veth", master=QBR, mtu=1450, up=True, parent=QVO),
            QVO: Link(QVO, "veth", mtu=1450, up=True, parent=QVB),
            PORT.device: replace(TAP, master=QBR, mtu=1450, up=True)}


def text(commands: tuple[tuple[str, ...], ...]) -> list[str]:
    return [" ".join(c) for c in commands]


def test_the_names_are_neutrons() -> None:
    assert (QBR, QVB, QVO) == ("qbr0123456789a", "qvb0123456789a", "qvo0123456789a")


def test_a_fresh_port_gets_its_bridge_and_veth_and_its_tap_joins_the_bridge() -> None:
    done = plan(DESIRED, {PORT.device: TAP})
    assert text(done.additions) == [
        f"ip link add {QBR} type bridge",
        f"ovs-vsctl --if-exists del-port br-int {QVO}",
        f"ip link add {QVB} mtu 1450 type veth peer name {QVO} mtu 1450",
        f"ip link set {QVB} master {QBR}", f"ip link set {QVB} mtu 1450",
        f"ip link set {QVB} up",
        f"ip link set {QVO} mtu 1450", f"ip link set {QVO} up",
        f"ip link set {PORT.device} master {QBR}", f"ip link set {PORT.device} mtu 1450",
        f"ip link set {PORT.device} up",
        f"ip link set {QBR} mtu 1450", f"ip link set {QBR} up"]
    assert done.removals == ()


def test_a_converged_host_gets_no_command() -> None:
    assert plan(DESIRED, converged()) == HybridPlan()


def test_a_tap_the_hypervisor_has_not_made_waits() -> None:
    assert plan(DESIRED, {}).additions == ()
    assert ovs_view(DESIRED, {}).ports == ()


def test_the_switch_is_given_the_qvo_in_place_of_the_tap() -> None:
    assert ovs_view(DESIRED, {PORT.device: TAP}).ports == (replace(PORT, device=QVO),)


def test_half_a_veth_is_remade_whole() -> None:
    links = converged()
    del links[QVO]
    links[QVB] = replace(links[QVB], parent=None)
    additions = text(plan(DESIRED, links).additions)
    assert additions[:3] == [f"ovs-vsctl --if-exists del-port br-int {QVO}",
                             f"ip link del {QVB}",
                             f"ip link add {QVB} mtu 1450 type veth peer name {QVO} mtu 1450"]
    assert f"ip link set {QVB} master {QBR}" in additions


def test_a_bridge_deleted_by_hand_is_made_again_and_both_members_rejoin() -> None:
    links = converged()
    del links[QBR]
    links[QVB] = replace(links[QVB], master=None)
    links[PORT.device] = replace(links[PORT.device], master=None)
    additions = text(plan(DESIRED, links).additions)
    assert additions[0] == f"ip link add {QBR} type bridge"
    assert f"ip link set {QVB} master {QBR}" in additions
    assert f"ip link set {PORT.device} master {QBR}" in additions


def test_a_port_no_longer_here_loses_its_bridge_and_veth_and_keeps_its_tap() -> None:
    done = plan(HostState("hv1"), converged())
    assert done.additions == ()
    assert text(done.removals) == [f"ip link del {QBR}", f"ip link del {QVB}"]  # qvo with it


def test_a_port_whose_tap_is_gone_is_taken_apart() -> None:
    links = converged()
    del links[PORT.device]
    assert text(plan(DESIRED, links).removals) == [f"ip link del {QBR}",
                                                   f"ip link del {QVB}"]


def test_a_stranger_in_a_ports_bridge_is_released_not_deleted() -> None:
    links = {**converged(), "eth9": Link("eth9", "veth", master=QBR, mtu=1450, up=True)}
    assert text(plan(DESIRED, links).removals) == ["ip link set eth9 nomaster"]


def test_foreign_devices_are_left_alone() -> None:
    links = {**converged(), "br0": Link("br0", "bridge"), "veth7": Link("veth7", "veth"),
             "qvbfoo": Link("qvbfoo", "vxlan")}
    assert plan(DESIRED, links).removals == ()


@pytest.mark.parametrize("name", [QBR, QVB, QVO])
def test_a_name_taken_by_another_kind_of_device_is_refused(name: str) -> None:
    links = {**converged(), name: Link(name, "dummy")}
    with pytest.raises(HybridPlanError, match=f"{name} exists and is not"):
        plan(DESIRED, links)


def test_under_the_userspace_switch_qvb_finishes_checksums_before_it_joins() -> None:
    """The checksum offload goes off each time qvb (re)joins its bridge, first."""
    additions = text(plan(DESIRED, {PORT.device: TAP}, checksum_off=True).additions)
    assert additions.index(f"txcsum off {QVB}") + 1 == additions.index(
        f"ip link set {QVB} master {QBR}")
    assert plan(DESIRED, converged(), checksum_off=True) == HybridPlan()
    links = converged()
    links[QVB] = replace(links[QVB], master=None)
    assert text(plan(DESIRED, links, checksum_off=True).additions) == [
        f"txcsum off {QVB}", f"ip link set {QVB} master {QBR}"]
    assert "txcsum" not in " ".join(text(plan(DESIRED, {PORT.device: TAP}).additions))

"""Open vSwitch's hybrid plugging: a small Linux bridge per port, where its filter runs.

Open vSwitch forwards a frame without ever passing it to the kernel bridge's netfilter
hooks, and the security groups (:mod:`core.network.agent.secgroup_nft`) are nftables
rules on those hooks. So, as Neutron's ``iptables_hybrid`` firewall driver and
os-vif's hybrid plug lay it out, each port's tap is not put on ``br-int`` itself::

    tap<id>  --  qbr<id> (Linux bridge)  --  qvb<id> ==veth== qvo<id>  --  br-int
                 the port's filter sees every               tagged access port,
                 frame here, as on a brq bridge             iface-id etc.

(``<id>``: the port id's first 11 characters, as in the tap's name.)

``qvo`` is what the Open vSwitch planner (:mod:`core.network.agent.openvswitch`) plugs
into ``br-int`` in place of the tap: :func:`ovs_view` hands it the desired state with
each port's device renamed. This module is the Linux side only, a pure planner like
:mod:`core.network.agent.linuxbridge`: from the desired ports and the host's links
(``ip -d -j link show``) to ``ip`` commands, split into additions (run before the
switch is planned: a qvo must exist before br-int can take it) and removals (run
after: br-int lets go of a qvo before its veth is deleted).

A port is laid out once its tap exists (the hypervisor made it); a port that is no
longer desired, or whose tap is gone, loses its bridge and veth. It only ever removes
what it owns: bridges named ``qbr*``, veths named ``qvb*``/``qvo*``; a tap is released
from a stale ``qbr`` bridge, never deleted.

A veth remade (half of it was gone) is first taken off br-int
(``ovs-vsctl --if-exists del-port``): Open vSwitch's userspace datapath does not
reopen a device that was deleted and made again under the same name, it keeps its
port and forwards nothing (seen with Open vSwitch 3.1 here).

Each bridge and both veth ends get the network's MTU. With the userspace switch
(``checksum_off``), ``qvb`` gets transmit checksum offload turned off
(:mod:`core.network.agent.txcsum` says why) each time it joins its bridge, before it
does: so a veth remade by hand, or by a round that stopped half-way, gets it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.network.agent.driver import DataPathError, HostState, LocalPort
from core.network.agent.linuxbridge import Command, Link
from core.network.agent.openvswitch import INTEGRATION_BRIDGE

BRIDGE_PREFIX = "qbr"
BRIDGE_END = "qvb"
SWITCH_END = "qvo"
TX_CHECKSUM_OFF = ("txcsum", "off")  # + device: run by python -m core.network.agent.txcsum


def qbr_name(port_id: str) -> str:
    return BRIDGE_PREFIX + port_id[:11]


def qvb_name(port_id: str) -> str:
    return BRIDGE_END + port_id[:11]


def qvo_name(port_id: str) -> str:
    return SWITCH_END + port_id[:11]


class HybridPlanError(DataPathError):
    """A name the hybrid plug needs is taken by a device of another kind: nothing runs."""


@dataclass(frozen=True)
class HybridPlan:
    """The commands of one round (``ip``, and ``ovs-vsctl`` to take a remade veth off
    br-int): before and after the switch's own plan."""

    additions: tuple[Command, ...] = ()
    removals: tuple[Command, ...] = ()


def _ip(*args: str | int) -> Command:
    return ("ip", *(str(a) for a in args))


def present(desired: HostState, links: Mapping[str, Link]) -> tuple[LocalPort, ...]:
    """The desired ports whose tap the hypervisor has made (the others wait)."""
    nets = {n.network_id for n in desired.networks}
    return tuple(p for p in desired.ports if p.network_id in nets and p.device in links)


def ovs_view(desired: HostState, links: Mapping[str, Link]) -> HostState:
    """The state br-int must carry: each present port with its ``qvo`` as its device."""
    ports = tuple(LocalPort(p.port_id, p.network_id, p.mac, qvo_name(p.port_id),
                            p.device_id) for p in present(desired, links))
    return HostState(desired.host, desired.networks, ports, desired.remote_ports)


def _member(link: Link | None, name: str, master: str | None, mtu: int) -> list[Command]:
    """``name`` in ``master`` (None: leave its master alone), at ``mtu``, up."""
    out: list[Command] = []
    if master is not None and (link is None or link.master != master):
        out.append(_ip("link", "set", name, "master", master))
    if link is None or link.mtu != mtu:
        out.append(_ip("link", "set", name, "mtu", mtu))
    if link is None or not link.up:
        out.append(_ip("link", "set", name, "up"))
    return out


def _port_additions(port: LocalPort, mtu: int, links: Mapping[str, Link],
                    checksum_off: bool) -> list[Command]:
    qbr, qvb, qvo = qbr_name(port.port_id), qvb_name(port.port_id), qvo_name(port.port_id)
    out: list[Command] = []
    bridge = links.get(qbr)
    if bridge is not None and bridge.kind != "bridge":
        raise HybridPlanError(f"{qbr} exists and is not a bridge ({bridge.kind})")
    if bridge is None:
        out.append(_ip("link", "add", qbr, "type", "bridge"))
    for name in (qvb, qvo):
        found = links.get(name)
        if found is not None and found.kind != "veth":
            raise HybridPlanError(f"{name} exists and is not a veth ({found.kind})")
    b_end, o_end = links.get(qvb), links.get(qvo)
    # a pair is whole when each end names the other as its peer (``ip`` shows it as
    # the link of a veth in the same namespace); half a pair is deleted and remade
    whole = (b_end is not None and o_end is not None
             and b_end.parent == qvo and o_end.parent == qvb)
    if not whole:
        # the userspace switch keeps reading a deleted device's old packet socket even
        # once a device of that name is back: br-int lets go of qvo first, then the
        # switch's own plan adds it again, opened afresh
        out.append(("ovs-vsctl", "--if-exists", "del-port", INTEGRATION_BRIDGE, qvo))
        for name, end in ((qvb, b_end), (qvo, o_end)):
            if end is not None:
                out.append(_ip("link", "del", name))
        out.append(_ip("link", "add", qvb, "mtu", mtu, "type", "veth", "peer", "name",
                       qvo, "mtu", mtu))
        b_end = o_end = None
    if checksum_off and (b_end is None or b_end.master != qbr):
        out.append((*TX_CHECKSUM_OFF, qvb))
    out += _member(b_end, qvb, qbr, mtu)
    out += _member(o_end, qvo, None, mtu)
    out += _member(links.get(port.device), port.device, qbr, mtu)
    out += _member(bridge, qbr, None, mtu)
    return out


def plan(desired: HostState, links: Mapping[str, Link],
         checksum_off: bool = False) -> HybridPlan:
    """The hybrid plug of every present port, and the removal of every stale one
    (``checksum_off``: the switch is userspace, see the module docstring)."""
    mtus = {n.network_id: n.mtu for n in desired.networks}
    ports = present(desired, links)
    additions: list[Command] = []
    for port in sorted(ports, key=lambda p: p.port_id):
        additions += _port_additions(port, mtus[port.network_id], links, checksum_off)
    members = {qbr_name(p.port_id): {p.device, qvb_name(p.port_id)} for p in ports}
    veths = {name for p in ports for name in (qvb_name(p.port_id), qvo_name(p.port_id))}
    removals: list[Command] = []
    deleted: set[str] = set()
    for name, link in sorted(links.items()):
        if name.startswith(BRIDGE_PREFIX) and link.kind == "bridge" and name not in members:
            removals.append(_ip("link", "del", name))  # its members are released
        elif (name.startswith((BRIDGE_END, SWITCH_END)) and link.kind == "veth"
              and name not in veths):
            if link.parent not in deleted:
                removals.append(_ip("link", "del", name))  # its peer goes with it
            deleted.add(name)
        elif link.master in members and name not in members[link.master]:
            removals.append(_ip("link", "set", name, "nomaster"))  # a stray in our bridge
    return HybridPlan(tuple(additions), tuple(removals))

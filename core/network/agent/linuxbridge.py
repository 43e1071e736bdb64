"""The Linux bridge data path: a pure planner from (desired, observed) to commands.

Per network, as Neutron's linuxbridge agent lays it out:

* a bridge ``brq<network id[:11]>``;
* its uplink: a VXLAN device ``vxlan-<VNI>`` (``nolearning``, ``dstport`` 4789, the
  host's VTEP address as ``local``, no multicast group), a VLAN subinterface
  ``<physical interface>.<VLAN id>``, or for a flat network the physical interface
  itself;
* the local ports' taps.

On a VXLAN device the forwarding entries come from the database, not from
learning: ``00:00:00:00:00:00 dst <peer>`` per other host with a port on the
network (flooding: broadcast, ARP, unknown unicast go to each peer once) and
``<MAC> dst <peer>`` per port there. Every device of the network gets its MTU.

:func:`plan` compares the desired state with what the host has (:class:`Observed`)
and returns the commands (``ip``/``bridge`` argv) that converge it: missing
devices and entries are added, stale ones removed, and a converged host gets no
command at all. It only ever removes what it owns: bridges named ``brq*``, VXLAN
devices named ``vxlan-*``, VLAN subinterfaces and taps attached to its bridges.
A physical interface is released from a stale bridge, never deleted or changed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.common.config import ConfigError, DataPathConfig
from core.network.agent.driver import DataPathError, HostState, NetworkSpec

BRIDGE_PREFIX = "brq"
VXLAN_PREFIX = "vxlan-"
VXLAN_PORT = 4789
FLOOD_MAC = "00:00:00:00:00:00"
Command = tuple[str, ...]


class PlanError(DataPathError):
    """The desired state cannot be laid out on this host (no VTEP address, a physical
    network without an interface, a name taken by a foreign device): nothing is run."""


@dataclass(frozen=True)
class HostConfig:
    """This hypervisor's side of the networks: its VTEP address and, per physical
    network, the interface that carries it."""

    local_vtep: str | None = None
    physical_interfaces: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Link:
    """A network device as ``ip -d -j link show`` reports it."""

    name: str
    kind: str | None = None  # bridge, vxlan, vlan, veth, tun, ...
    master: str | None = None
    mtu: int = 1500
    up: bool = False
    vni: int | None = None
    local: str | None = None
    port: int | None = None
    learning: bool | None = None
    vlan_id: int | None = None
    parent: str | None = None


@dataclass(frozen=True)
class FdbEntry:
    """A forwarding entry of a VXLAN device: frames for ``mac`` go to ``dst``."""

    device: str
    mac: str
    dst: str


@dataclass(frozen=True)
class Observed:
    links: Mapping[str, Link] = field(default_factory=dict)
    fdb: frozenset[FdbEntry] = frozenset()


def host_config(cfg: DataPathConfig) -> HostConfig:
    """The ``network.datapath`` section as the planner's HostConfig (a ConfigError
    naming the entry that is not PHYSNET:INTERFACE)."""
    if cfg.local_ip is not None:
        try:
            ipaddress.ip_address(cfg.local_ip)
        except ValueError:
            raise ConfigError(f"network.datapath.local_ip: not an IP address: "
                              f"{cfg.local_ip!r}") from None
    mappings: dict[str, str] = {}
    for i, entry in enumerate(cfg.physical_interface_mappings):
        physnet, _, interface = entry.partition(":")
        if not physnet or not interface or physnet in mappings or len(interface) > 15:
            raise ConfigError(f"network.datapath.physical_interface_mappings[{i}]: must be "
                              f"PHYSNET:INTERFACE, each physical network once, got {entry!r}")
        mappings[physnet] = interface
    return HostConfig(cfg.local_ip, mappings)


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + network_id[:11]


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni}"


def vlan_name(interface: str, vlan_id: int) -> str:
    name = f"{interface}.{vlan_id}"
    if len(name) > 15:
        raise PlanError(f"VLAN device name {name} is longer than 15 characters: give the "
                        f"physical interface {interface} a shorter name")
    return name


def _ip(*args: str | int) -> Command:
    return ("ip", *(str(a) for a in args))


def _bridge(*args: str | int) -> Command:
    return ("bridge", *(str(a) for a in args))


def uplink_of(net: NetworkSpec, cfg: HostConfig) -> str:
    """The device that connects the network's bridge to the other hosts."""
    if net.network_type == "vxlan":
        if net.segmentation_id is None:
            raise PlanError(f"network {net.network_id}: vxlan without a VNI")
        return vxlan_name(net.segmentation_id)
    if net.network_type not in ("vlan", "flat"):
        raise PlanError(f"network {net.network_id}: unknown type {net.network_type!r}")
    interface = cfg.physical_interfaces.get(net.physical_network or "")
    if interface is None:
        raise PlanError(f"network {net.network_id}: this host has no interface for "
                        f"physical network {net.physical_network!r}")
    if net.network_type == "flat":
        return interface
    if net.segmentation_id is None:
        raise PlanError(f"network {net.network_id}: vlan without an id")
    return vlan_name(interface, net.segmentation_id)


def _vxlan_matches(link: Link, net: NetworkSpec, cfg: HostConfig) -> bool:
    return (link.kind == "vxlan" and link.vni == net.segmentation_id
            and link.local == cfg.local_vtep and link.port == VXLAN_PORT
            and link.learning is False)


def _create_uplink(net: NetworkSpec, name: str, cfg: HostConfig) -> list[Command]:
    if net.network_type == "vxlan":
        if not cfg.local_vtep:
            raise PlanError(f"network {net.network_id} is vxlan but this host has no "
                            "VTEP address configured")
        return [_ip("link", "add", name, "type", "vxlan", "id", net.segmentation_id or 0,
                    "local", cfg.local_vtep, "dstport", VXLAN_PORT, "nolearning")]
    interface = cfg.physical_interfaces[net.physical_network or ""]
    return [_ip("link", "add", "link", interface, "name", name, "type", "vlan", "id",
                net.segmentation_id or 0)]


def _ensure_member(link: Link | None, name: str, bridge: str, mtu: int | None,
                   new: bool) -> list[Command]:
    """Attach ``name`` to ``bridge``, set its MTU (None: leave it) and bring it up."""
    out: list[Command] = []
    if new or link is None or link.master != bridge:
        out.append(_ip("link", "set", name, "master", bridge))
    if mtu is not None and (new or link is None or link.mtu != mtu):
        out.append(_ip("link", "set", name, "mtu", mtu))
    if new or link is None or not link.up:
        out.append(_ip("link", "set", name, "up"))
    return out


def plan(desired: HostState, observed: Observed, cfg: HostConfig) -> list[Command]:
    """The commands that turn ``observed`` into ``desired`` (none if they agree)."""
    links = observed.links
    nets = {n.network_id: n for n in desired.networks}
    bridges = {bridge_name(n.network_id): n for n in nets.values()}
    uplinks = {bridge_name(n.network_id): uplink_of(n, cfg) for n in nets.values()}
    taps = {p.device: p for p in desired.ports if p.network_id in nets}

    # who belongs in which bridge; what we own
    members: dict[str, str] = {}  # device -> its bridge
    for br, up in uplinks.items():
        members[up] = br
    for tap in taps.values():
        members[tap.device] = bridge_name(tap.network_id)
    recreate: set[str] = set()
    for br, net in bridges.items():
        up = uplinks[br]
        link = links.get(br)
        if link is not None and link.kind != "bridge":
            raise PlanError(f"{br} exists and is not a bridge ({link.kind})")
        found = links.get(up)
        if net.network_type == "vxlan" and found is not None and not _vxlan_matches(
                found, net, cfg):
            if found.kind != "vxlan":
                raise PlanError(f"{up} exists and is not a VXLAN device ({found.kind})")
            recreate.add(up)
        if net.network_type == "vlan" and found is not None and (
                found.kind != "vlan" or found.vlan_id != net.segmentation_id):
            raise PlanError(f"{up} exists and is not VLAN {net.segmentation_id}")

    removals: list[Command] = []
    # stale forwarding entries (on devices that stay)
    wanted_fdb = _desired_fdb(desired, nets)
    for entry in sorted(observed.fdb - wanted_fdb, key=lambda e: (e.device, e.mac, e.dst)):
        if entry.device.startswith(VXLAN_PREFIX) and entry.device in members and (
                entry.device not in recreate):
            removals.append(_bridge("fdb", "del", entry.mac, "dev", entry.device,
                                    "dst", entry.dst))
    # stale members of our bridges, stale VXLAN devices, stale bridges
    for name, link in sorted(links.items()):
        ours = link.master is not None and link.master.startswith(BRIDGE_PREFIX)
        stale_vxlan = (name.startswith(VXLAN_PREFIX) and link.kind == "vxlan"
                       and name not in members)
        if name in recreate or stale_vxlan:
            removals.append(_ip("link", "del", name))
        elif ours and name not in members:
            if link.kind == "vlan":
                removals.append(_ip("link", "del", name))
            else:  # a tap, or a physical interface: released, never deleted
                removals.append(_ip("link", "set", name, "nomaster"))
    for name, link in sorted(links.items()):
        if name.startswith(BRIDGE_PREFIX) and link.kind == "bridge" and name not in bridges:
            removals.append(_ip("link", "del", name))

    additions: list[Command] = []
    for br, net in sorted(bridges.items()):
        link = links.get(br)
        new_bridge = link is None
        if new_bridge:
            additions.append(_ip("link", "add", br, "type", "bridge"))
        up = uplinks[br]
        found = None if up in recreate else links.get(up)
        new_uplink = found is None
        if new_uplink:
            if net.network_type == "flat":
                raise PlanError(f"physical interface {up} of network {net.network_id} "
                                "is missing")
            additions += _create_uplink(net, up, cfg)
        # the physical interface of a flat network keeps the underlay's MTU
        additions += _ensure_member(found, up, br,
                                    None if net.network_type == "flat" else net.mtu,
                                    new_uplink)
        for tap in sorted((t for t in taps.values() if t.network_id == net.network_id),
                          key=lambda t: t.device):
            tap_link = links.get(tap.device)
            if tap_link is None:
                continue  # the hypervisor has not made it (yet): the next sync plugs it
            additions += _ensure_member(tap_link, tap.device, br, net.mtu, False)
        if new_bridge or link is None or link.mtu != net.mtu:
            additions.append(_ip("link", "set", br, "mtu", net.mtu))
        if new_bridge or link is None or not link.up:
            additions.append(_ip("link", "set", br, "up"))
    have = {e for e in observed.fdb if e.device not in recreate}
    for entry in sorted(wanted_fdb - have, key=lambda e: (e.device, e.mac, e.dst)):
        additions.append(_bridge("fdb", "append", entry.mac, "dev", entry.device,
                                 "dst", entry.dst))
    return removals + additions


def _desired_fdb(desired: HostState, nets: Mapping[str, NetworkSpec]) -> frozenset[FdbEntry]:
    out: set[FdbEntry] = set()
    for net in nets.values():
        if net.network_type != "vxlan" or net.segmentation_id is None:
            continue
        device = vxlan_name(net.segmentation_id)
        for peer in desired.peers(net.network_id):
            out.add(FdbEntry(device, FLOOD_MAC, peer))
        for port in desired.remote_ports:
            if port.network_id == net.network_id:
                out.add(FdbEntry(device, port.mac.lower(), port.vtep))
    return frozenset(out)

"""The Open vSwitch data path: a pure planner from (desired, observed) to commands.

Laid out as Neutron's openvswitch agent does it in spirit, on one bridge:

* one integration bridge ``br-int`` per hypervisor (``fail_mode=secure``: without
  our flows it forwards nothing), of the configured ``datapath_type`` (``system``,
  the kernel module, or ``netdev``, the userspace datapath);
* each network a *local* VLAN tag on this host (1..4094), kept while any port of the
  network carries it (``external_ids:haven-net``) and otherwise the lowest free one:
  stable across syncs and agent restarts because it is read back from the bridge;
* each local port's device an access port with its network's tag and the network's
  MTU (``mtu_request``), its interface's ``external_ids`` as os-vif sets them for
  Neutron (``iface-id``, ``iface-status``, ``attached-mac``, ``vm-uuid``); the device
  is the port's ``qvo`` veth end, never the tap itself: the driver plugs each tap into
  a Linux bridge of its own where the security groups filter it
  (:mod:`core.network.agent.hybrid`);
* each physical network's interface (``physical_interface_mappings``) a trunk port
  (no tag, ``external_ids:haven-physnet``, its MTU left alone: it is the underlay's)
  shared by that physical network's flat network (untagged frames) and its VLAN
  networks (802.1Q frames, the VLAN id the network's segmentation id);
* one VXLAN port per peer hypervisor (``vx`` + the peer's address), ``options:key=flow``
  with ``remote_ip`` and ``local_ip``: ports grow with the peers, not with
  peers x networks, and the VNI is chosen per frame by the flows below.

Forwarding is by explicit OpenFlow rules, not the NORMAL action, so nothing is
learned: a frame belongs to the network of the port it came in on (register 0
holds the network's local tag) and only that network's ports and VNI are ever
output to.

* table 0: a tap, the physical port with a VLAN id this host carries (the tag
  stripped) or untagged (the flat network), or a tunnel port with a VNI this host
  carries from that peer sets reg0 to the network's tag and goes to table 1 (from a
  local port) or 2 (from an uplink); anything else is dropped. A tap of a flat or
  VLAN network is an access port as Neutron's are: a frame the guest tagged itself
  is dropped, so no guest of a flat network puts a VLAN network's id on the wire;
* table 1 (from a local port): a known MAC (local tap, or remote port on a peer, from
  the database) goes to its port or its peer's tunnel with the VNI; any other
  destination (broadcast, multicast, unknown unicast) is flooded to the network's
  other taps, then to its physical port (a VLAN network's frame tagged with its
  VLAN id on the way: ``mod_vlan_vid``, after the taps' outputs) and every peer with
  a port on it;
* table 2 (from an uplink): a local MAC to its tap, else flooded to the local taps
  only (never back out of an uplink: no loops between peers).

Flooding unknown unicast to every peer is this first version's simplification
(Neutron's l2population with ARP responders would avoid it).

VLAN networks are Neutron's layout folded into one bridge: where Neutron's agent
tags a frame with the local VLAN on br-int and a provider bridge per physical
network (patched to br-int) rewrites it to the segmentation id, here the network is
register 0 inside br-int and the flows of the physical port do that translation
(push on the way out, match and strip on the way in). Open vSwitch tags and untags
itself, so the kernel's 802.1Q module is not needed (the userspace datapath is
enough).

:func:`plan` returns ``ovs-vsctl``/``ovs-ofctl`` argv. A flow names ports, so it is
planned only for ports the bridge already has (with an OpenFlow port number); the
driver plans again after adding ports, so a fresh host converges in two rounds and a
converged one gets no command. Everything on ``br-int`` is Haven's: a port or flow
that is not desired is removed (``del-port`` detaches a tap or a physical
interface, it never deletes the device).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.network.agent.driver import DataPathError, HostState, LocalPort, NetworkSpec

INTEGRATION_BRIDGE = "br-int"
NET_KEY = "haven-net"
PORT_KEY = "haven-port"
PHYSNET_KEY = "haven-physnet"
UNTAGGED = "vlan_tci=0x0000/0x1fff"  # no 802.1Q tag, or a priority tag (VLAN id 0)
PEER_KEY = "haven-peer"
Command = tuple[str, ...]


class PlanError(DataPathError):
    """The desired state cannot be laid out on this host: nothing is run."""


@dataclass(frozen=True)
class OvsHostConfig:
    """This hypervisor's VTEP address, physical interfaces and OVS datapath type."""

    local_vtep: str | None = None
    physical_interfaces: Mapping[str, str] = field(default_factory=dict)
    datapath_type: str = "system"  # or netdev


@dataclass(frozen=True)
class OvsPort:
    """A port of br-int with its (single) interface, as OVSDB has it."""

    name: str
    tag: int | None = None
    type: str = ""  # "" (system device), vxlan, internal
    options: Mapping[str, str] = field(default_factory=dict)
    mtu_request: int | None = None
    external_ids: Mapping[str, str] = field(default_factory=dict)
    ofport: int = -1  # the OpenFlow port number; -1 while the device is not open
    iface_external_ids: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Flow:
    """An OpenFlow rule: ``match`` is its fields sorted (the dump's order is OVS's)."""

    table: int
    priority: int
    match: tuple[str, ...]
    actions: str

    @property
    def key(self) -> tuple[int, int, tuple[str, ...]]:
        return (self.table, self.priority, self.match)

    def match_text(self) -> str:
        return ",".join((f"table={self.table}", f"priority={self.priority}", *self.match))


@dataclass(frozen=True)
class Observed:
    """br-int as the host has it (``bridge`` None: no br-int yet), and the names of the
    host's network devices (a tap is plugged only once the hypervisor made it)."""

    bridge: Mapping[str, str] | None = None  # datapath_type, fail_mode
    ports: Mapping[str, OvsPort] = field(default_factory=dict)
    flows: frozenset[Flow] = frozenset()
    devices: frozenset[str] = frozenset()


def tunnel_port_name(peer: str) -> str:
    """``vx`` + the IPv4 address in hex (10 characters), or a digest of an IPv6 one."""
    address = ipaddress.ip_address(peer)
    if address.version == 4:
        return f"vx{int(address):08x}"
    return "vx6" + hashlib.sha256(address.packed).hexdigest()[:10]


def parse_flow(line: str) -> Flow:
    """One line of ``ovs-ofctl --names --no-stats dump-flows`` (OVS quotes a port name
    with a ``-`` in it, as tap names have; Haven's names never hold a quote)."""
    head, sep, actions = line.strip().replace('"', "").partition(" actions=")
    if not sep:
        raise DataPathError(f"unreadable flow: {line!r}")
    table, priority, match = 0, 32768, []
    for item in head.replace(", ", ",").split(","):
        name, _, value = item.partition("=")
        if name == "table":
            table = int(value)
        elif name == "priority":
            priority = int(value)
        elif name in ("cookie", "reset_counts") or not item:
            continue
        else:
            match.append(item)
    return Flow(table, priority, tuple(sorted(match)), actions.strip())


def _flow(table: int, priority: int, match: list[str], actions: list[str]) -> Flow:
    return Flow(table, priority, tuple(sorted(match)), ",".join(actions))


def _vsctl(*args: str | int) -> Command:
    return ("ovs-vsctl", *(str(a) for a in args))


def _ofctl(*args: str) -> Command:
    return ("ovs-ofctl", *args)


def _map(values: Mapping[str, str]) -> str:
    return "{" + ",".join(f'"{k}"="{v}"' for k, v in sorted(values.items())) + "}"


def _check(net: NetworkSpec, cfg: OvsHostConfig) -> None:
    if net.network_type == "vxlan":
        if net.segmentation_id is None:
            raise PlanError(f"network {net.network_id}: vxlan without a VNI")
        if not cfg.local_vtep:
            raise PlanError(f"network {net.network_id} is vxlan but this host has no "
                            "VTEP address configured")
    elif net.network_type in ("flat", "vlan"):
        if (net.physical_network or "") not in cfg.physical_interfaces:
            raise PlanError(f"network {net.network_id}: this host has no interface for "
                            f"physical network {net.physical_network!r}")
        if net.network_type == "vlan" and not 1 <= (net.segmentation_id or 0) <= 4094:
            raise PlanError(f"network {net.network_id}: vlan without a VLAN id 1..4094 "
                            f"({net.segmentation_id!r})")
    else:
        raise PlanError(f"network {net.network_id}: the openvswitch mechanism carries flat, "
                        f"vlan and vxlan networks, not {net.network_type!r}")


def allocate_tags(desired: HostState, observed: Observed) -> dict[str, int]:
    """Each desired network's local tag: the one its ports already carry, else the
    lowest tag no kept network uses."""
    nets = [n.network_id for n in desired.networks]
    tags: dict[str, int] = {}
    for port in sorted(observed.ports.values(), key=lambda p: p.name):
        net = port.external_ids.get(NET_KEY)
        if net in nets and net not in tags and port.tag is not None and (
                port.tag not in tags.values()):
            tags[net] = port.tag
    free = (t for t in range(1, 4095) if t not in tags.values())
    for net in nets:
        if net not in tags:
            tags[net] = next(free)
    return tags


def neutron_ids(port: LocalPort) -> dict[str, str]:
    """The interface's ``external_ids`` as os-vif writes them for Neutron's agent (what
    tools that read br-int expect to find)."""
    ids = {"iface-id": port.port_id, "iface-status": "active", "attached-mac": port.mac}
    if port.device_id:
        ids["vm-uuid"] = port.device_id
    return ids


def desired_ports(desired: HostState, observed: Observed, cfg: OvsHostConfig,
                  tags: Mapping[str, int]) -> dict[str, OvsPort]:
    """The ports br-int must have (taps only once their device exists)."""
    nets = {n.network_id: n for n in desired.networks}
    out: dict[str, OvsPort] = {}
    for port in desired.ports:
        net = nets.get(port.network_id)
        if net is None or port.device not in observed.devices:
            continue
        out[port.device] = OvsPort(port.device, tags[net.network_id], "", {}, net.mtu,
                                   {NET_KEY: net.network_id, PORT_KEY: port.port_id},
                                   iface_external_ids=neutron_ids(port))
    segments: dict[tuple[str, int | None], str] = {}  # (physnet, VLAN id or None) -> net
    for net in sorted(nets.values(), key=lambda n: n.network_id):
        if net.network_type not in ("flat", "vlan"):
            continue
        physnet = net.physical_network or ""
        segment = (physnet, net.segmentation_id if net.network_type == "vlan" else None)
        if segment in segments:
            raise PlanError(f"networks {segments[segment]} and {net.network_id} would share "
                            f"physical network {physnet!r} "
                            + (f"VLAN {segment[1]}" if segment[1] else "untagged"))
        segments[segment] = net.network_id
        interface = cfg.physical_interfaces[physnet]
        if interface in out and out[interface].external_ids.get(PHYSNET_KEY) != physnet:
            raise PlanError(f"physical interface {interface} would carry two physical "
                            f"networks or be a port as well")
        if interface not in observed.devices:
            raise PlanError(f"physical interface {interface} of network "
                            f"{net.network_id} is missing")
        out[interface] = OvsPort(interface, None, "", {}, None, {PHYSNET_KEY: physnet})
    peers = {peer for n in nets.values() if n.network_type == "vxlan"
             for peer in desired.peers(n.network_id)}
    for peer in sorted(peers):
        name = tunnel_port_name(peer)
        out[name] = OvsPort(name, None, "vxlan", {"key": "flow", "remote_ip": peer,
                                                  "local_ip": cfg.local_vtep or ""},
                            None, {PEER_KEY: peer})
    return out


def _port_commands(want: OvsPort, have: OvsPort | None) -> list[Command]:
    if have is not None and have.type != want.type:
        return [_vsctl("del-port", INTEGRATION_BRIDGE, want.name),
                *_port_commands(want, None)]
    port_set: list[str] = []
    if have is None or have.tag != want.tag:
        port_set.append(f"tag={want.tag}" if want.tag is not None else "tag=[]")
    if have is None or dict(have.external_ids) != dict(want.external_ids):
        port_set.append(f"external_ids={_map(want.external_ids)}")
    iface_set: list[str] = []
    if have is None and want.type:  # a changed type was recreated above
        iface_set.append(f"type={want.type}")
    if (want.options if have is None else dict(have.options) != dict(want.options)):
        iface_set.append(f"options={_map(want.options)}")
    if want.mtu_request is not None and (have is None or have.mtu_request != want.mtu_request):
        iface_set.append(f"mtu_request={want.mtu_request}")
    if (want.iface_external_ids if have is None
            else dict(have.iface_external_ids) != dict(want.iface_external_ids)):
        iface_set.append(f"external_ids={_map(want.iface_external_ids)}")
    out: list[str] = []
    if have is None:
        out += ["add-port", INTEGRATION_BRIDGE, want.name]
    if port_set:
        out += [*(["--"] if out else []), "set", "port", want.name, *port_set]
    if iface_set:
        out += [*(["--"] if out else []), "set", "interface", want.name, *iface_set]
    return [_vsctl(*out)] if out else []


def desired_flows(desired: HostState, ports: Mapping[str, OvsPort],
                  observed: Observed, tags: Mapping[str, int]) -> frozenset[Flow]:
    """The OpenFlow rules of br-int, for the desired ports the bridge has opened."""
    def live(name: str) -> bool:
        have = observed.ports.get(name)
        return name in ports and have is not None and have.ofport > 0

    flows = {_flow(0, 0, [], ["drop"])}
    for net in desired.networks:
        tag = tags[net.network_id]
        reg = f"reg0={tag:#x}"
        load = f"load:{tag:#x}->NXM_NX_REG0[]"
        taps = sorted((p for p in desired.ports
                       if p.network_id == net.network_id and live(p.device)),
                      key=lambda p: p.device)
        uplinks: list[str] = []  # output actions towards the other hosts
        access: list[str] = []  # what a tap's frame must be to be taken in
        if net.network_type in ("flat", "vlan"):
            access = [UNTAGGED]
            phys = next(p.name for p in ports.values()
                        if p.external_ids.get(PHYSNET_KEY) == (net.physical_network or ""))
            if live(phys) and net.network_type == "flat":
                flows.add(_flow(0, 10, [f"in_port={phys}", UNTAGGED],
                                [load, "resubmit(,2)"]))
                uplinks.append(f"output:{phys}")
            elif live(phys):
                vid = net.segmentation_id or 0
                flows.add(_flow(0, 10, [f"in_port={phys}", f"dl_vlan={vid}"],
                                ["strip_vlan", load, "resubmit(,2)"]))
                uplinks += [f"mod_vlan_vid:{vid}", f"output:{phys}"]
        else:
            vni = f"{net.segmentation_id or 0:#x}"
            tunnels = [tunnel_port_name(p) for p in sorted(desired.peers(net.network_id))]
            tunnels = [t for t in tunnels if live(t)]
            for tunnel in tunnels:
                flows.add(_flow(0, 10, [f"in_port={tunnel}", f"tun_id={vni}"],
                                [load, "resubmit(,2)"]))
            if tunnels:
                uplinks.append(f"load:{vni}->NXM_NX_TUN_ID[]")
                uplinks += [f"output:{t}" for t in tunnels]
            for remote in desired.remote_ports:
                tunnel = tunnel_port_name(remote.vtep)
                if remote.network_id == net.network_id and tunnel in tunnels:
                    flows.add(_flow(1, 20, [reg, f"dl_dst={remote.mac.lower()}"],
                                    [f"load:{vni}->NXM_NX_TUN_ID[]", f"output:{tunnel}"]))
        for tap in taps:
            flows.add(_flow(0, 10, [f"in_port={tap.device}", *access],
                            [load, "resubmit(,1)"]))
            for table in (1, 2):
                flows.add(_flow(table, 20, [reg, f"dl_dst={tap.mac.lower()}"],
                                [f"output:{tap.device}"]))
        local = [f"output:{t.device}" for t in taps]
        if local or uplinks:
            flows.add(_flow(1, 10, [reg], local + uplinks))
        if local:
            flows.add(_flow(2, 10, [reg], local))
    return frozenset(flows)


def plan(desired: HostState, observed: Observed, cfg: OvsHostConfig) -> list[Command]:
    """The commands that bring br-int closer to ``desired`` (none once they agree)."""
    for net in desired.networks:
        _check(net, cfg)
    out: list[Command] = []
    if observed.bridge is None:
        out.append(_vsctl("add-br", INTEGRATION_BRIDGE, "--", "set", "bridge",
                          INTEGRATION_BRIDGE, f"datapath_type={cfg.datapath_type}",
                          "fail_mode=secure"))
        return out  # ports and flows once the bridge exists
    settings = [f"{k}={v}" for k, v in (("datapath_type", cfg.datapath_type),
                                        ("fail_mode", "secure"))
                if observed.bridge.get(k) != v]
    if settings:
        out.append(_vsctl("set", "bridge", INTEGRATION_BRIDGE, *settings))
    tags = allocate_tags(desired, observed)
    ports = desired_ports(desired, observed, cfg, tags)
    flows = desired_flows(desired, ports, observed, tags)
    have = {f.key: f for f in observed.flows}
    want_keys = {f.key for f in flows}
    # stale flows first: they may name a port that is about to go
    for flow in sorted(observed.flows, key=lambda f: f.key):
        if flow.key not in want_keys:
            out.append(_ofctl("--strict", "del-flows", INTEGRATION_BRIDGE, flow.match_text()))
    for name in sorted(set(observed.ports) - set(ports)):
        if name != INTEGRATION_BRIDGE:
            out.append(_vsctl("del-port", INTEGRATION_BRIDGE, name))
    for name, want in sorted(ports.items()):
        out += _port_commands(want, observed.ports.get(name))
    for flow in sorted(flows, key=lambda f: f.key):
        found = have.get(flow.key)
        if found is None or found.actions != flow.actions:
            out.append(_ofctl("add-flow", INTEGRATION_BRIDGE,
                              f"{flow.match_text()} actions={flow.actions}"))
    return out

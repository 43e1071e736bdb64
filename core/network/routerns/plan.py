"""The router's data plane, planned: from what a router is to what its namespace holds.

Pure functions, no system calls. :func:`plan` turns a :class:`RouterSpec` (the
router's gateway and interfaces with their addresses, its floating IPs, whether
it masquerades) into a :class:`RouterState`: the namespace's devices with their
MAC, addresses and bridge, its default route, forwarding, and its NAT rules.
:func:`render_nat` writes those rules as one nftables table; :func:`differences`
compares a state read back from the kernel with the planned one, which is what a
monitor reports. The executor (:mod:`core.network.routerns.netns`) does the rest.

The NAT table (``ip haven_router``), as Neutron's legacy L3 agent does it:

* each floating IP: ``dnat`` of its address to the fixed one (prerouting, and
  output for the router's own traffic) and ``snat`` of the fixed address to it on
  the way out of the gateway device, ahead of
* each interface's subnet (``enable_snat``): ``snat`` to the gateway address on the
  way out of the gateway device only, so traffic between the router's own
  subnets keeps its addresses.

Floating addresses sit on the gateway device as /32s, so the router answers ARP
for them; every address the executor adds is announced by gratuitous ARP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

TABLE = "haven_router"
GATEWAY_PREFIX, INTERFACE_PREFIX, PEER_PREFIX = "qg-", "qr-", "tap"
DEVICE_PREFIXES = (GATEWAY_PREFIX, INTERFACE_PREFIX)


class PlanError(ValueError):
    """The router as described cannot be carried out (a configuration error: the
    agent reports it, it does not retry it)."""


@dataclass(frozen=True)
class Leg:
    """One port of the router: its address on its subnet and the bridge of its network
    (in the node's namespace) that the port's device is plugged into."""

    port_id: str
    mac: str
    address: str
    prefixlen: int
    bridge: str

    @property
    def cidr(self) -> str:
        return str(ipaddress.ip_interface(f"{self.address}/{self.prefixlen}").network)


@dataclass(frozen=True)
class Gateway(Leg):
    next_hop: str | None = None  # the external subnet's gateway: the default route


@dataclass(frozen=True)
class FloatingMap:
    floating_ip: str
    fixed_ip: str


@dataclass(frozen=True)
class RouterSpec:
    router_id: str
    namespace: str
    gateway: Gateway | None
    interfaces: tuple[Leg, ...] = ()
    floating_ips: tuple[FloatingMap, ...] = ()
    enable_snat: bool = True
    admin_state_up: bool = True


@dataclass(frozen=True)
class Device:
    """A veth pair: ``name`` in the router's namespace, ``peer`` in the node's, on
    ``bridge``."""

    name: str
    peer: str
    mac: str
    bridge: str
    addresses: frozenset[str]  # "a.b.c.d/len"
    up: bool


@dataclass(frozen=True)
class NatRule:
    """One rule of the NAT table: its chain, what it matches, and where it maps."""

    chain: str  # prerouting, output, postrouting
    saddr: str | None = None  # an address or a network
    daddr: str | None = None
    oifname: str | None = None
    action: str = "snat"  # snat or dnat
    to: str = ""

    def render(self) -> str:
        parts = []
        if self.saddr is not None:
            parts.append(f"ip saddr {self.saddr}")
        if self.daddr is not None:
            parts.append(f"ip daddr {self.daddr}")
        if self.oifname is not None:
            parts.append(f'oifname "{self.oifname}"')
        parts.append(f"{self.action} to {self.to}")
        return " ".join(parts)


@dataclass(frozen=True)
class RouterState:
    namespace: str
    devices: tuple[Device, ...] = ()
    default_route: tuple[str, str] | None = None  # (next hop, device)
    forwarding: bool = True
    nat: tuple[NatRule, ...] = field(default_factory=tuple)


def device_name(prefix: str, port_id: str) -> str:
    """Neutron's names: 3 letters and the port's id, within Linux's 15 characters."""
    return (prefix + port_id)[:14]


def _addr(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise PlanError(f"{what}: {value!r} is not an IP address") from None
    if not isinstance(addr, ipaddress.IPv4Address):
        raise PlanError(f"{what}: {value} is not IPv4")
    return addr


def _device(leg: Leg, prefix: str, extra: list[str], up: bool) -> Device:
    _addr(leg.address, f"port {leg.port_id}")
    if not 0 < leg.prefixlen <= 32:
        raise PlanError(f"port {leg.port_id}: prefix length {leg.prefixlen}")
    if not leg.bridge:
        raise PlanError(f"port {leg.port_id}: no bridge to plug into")
    addresses = frozenset([f"{leg.address}/{leg.prefixlen}", *(f"{a}/32" for a in extra)])
    return Device(device_name(prefix, leg.port_id), device_name(PEER_PREFIX, leg.port_id),
                  leg.mac.lower(), leg.bridge, addresses, up)


def plan(spec: RouterSpec) -> RouterState:
    """What the router's namespace must hold (PlanError if the spec contradicts itself)."""
    subnets = [ipaddress.ip_network(leg.cidr) for leg in spec.interfaces]
    for i, a in enumerate(subnets):
        for b in subnets[i + 1:]:
            if a.overlaps(b):
                raise PlanError(f"interfaces on overlapping subnets {a} and {b}")
    gw = spec.gateway
    if spec.floating_ips and gw is None:
        raise PlanError("floating IPs without a gateway")
    seen: set[str] = set()
    for fip in spec.floating_ips:
        _addr(fip.floating_ip, "floating IP")
        fixed = _addr(fip.fixed_ip, f"fixed IP of floating IP {fip.floating_ip}")
        if fip.floating_ip in seen:
            raise PlanError(f"floating IP {fip.floating_ip} mapped twice")
        seen.add(fip.floating_ip)
        if not any(fixed in net for net in subnets):
            raise PlanError(f"fixed IP {fixed} of floating IP {fip.floating_ip} is behind "
                            "no interface of the router")
    up = spec.admin_state_up
    devices = [_device(leg, INTERFACE_PREFIX, [], up) for leg in spec.interfaces]
    nat: list[NatRule] = []
    route = None
    if gw is not None:
        fips = sorted(spec.floating_ips, key=lambda f: ipaddress.ip_address(f.floating_ip))
        qg = _device(gw, GATEWAY_PREFIX, [f.floating_ip for f in fips], up)
        devices.insert(0, qg)
        if gw.next_hop is not None:
            _addr(gw.next_hop, "gateway next hop")
            route = (gw.next_hop, qg.name)
        if up:
            for f in fips:
                nat.append(NatRule("prerouting", daddr=f.floating_ip, action="dnat",
                                   to=f.fixed_ip))
            for f in fips:
                nat.append(NatRule("output", daddr=f.floating_ip, action="dnat",
                                   to=f.fixed_ip))
            for f in fips:
                nat.append(NatRule("postrouting", saddr=f.fixed_ip, oifname=qg.name,
                                   action="snat", to=f.floating_ip))
            if spec.enable_snat:
                for leg in spec.interfaces:
                    nat.append(NatRule("postrouting", saddr=leg.cidr, oifname=qg.name,
                                       action="snat", to=gw.address))
    return RouterState(spec.namespace, tuple(devices), route if up else None, True, tuple(nat))


CHAINS = (("prerouting", "prerouting", "dstnat"), ("output", "output", "-100"),
          ("postrouting", "postrouting", "srcnat"))


def render_nat(state: RouterState) -> str:
    """An nft script that replaces the router's table in one transaction."""
    lines = [f"table ip {TABLE}", f"delete table ip {TABLE}", f"table ip {TABLE} {{"]
    for chain, hook, priority in CHAINS:
        lines.append(f"  chain {chain} {{")
        lines.append(f"    type nat hook {hook} priority {priority}; policy accept;")
        lines += [f"    {rule.render()}" for rule in state.nat if rule.chain == chain]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def differences(desired: RouterState, observed: RouterState) -> list[str]:
    """What the observed namespace lacks or has too much of, one line each ([]: it
    matches). Anything extra counts: a stale address or rule still attracts traffic."""
    out: list[str] = []
    want = {d.name: d for d in desired.devices}
    have = {d.name: d for d in observed.devices}
    for name in sorted(set(want) | set(have)):
        w, h = want.get(name), have.get(name)
        if h is None:
            out.append(f"device {name} missing")
        elif w is None:
            out.append(f"device {name} not planned")
        elif w != h:
            for attr in ("peer", "mac", "bridge", "addresses", "up"):
                if getattr(w, attr) != getattr(h, attr):
                    out.append(f"device {name}: {attr} {getattr(h, attr)!r}, planned "
                               f"{getattr(w, attr)!r}")
    if desired.default_route != observed.default_route:
        out.append(f"default route {observed.default_route}, planned {desired.default_route}")
    if desired.forwarding != observed.forwarding:
        out.append(f"forwarding {observed.forwarding}, planned {desired.forwarding}")
    if desired.nat != observed.nat:
        out.append(f"NAT rules {[r.render() for r in observed.nat]}, planned "
                   f"{[r.render() for r in desired.nat]}")
    return out

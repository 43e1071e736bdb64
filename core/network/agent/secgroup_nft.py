"""Security groups of one hypervisor's ports as one nftables ruleset (pure: no I/O).

Where the filtering happens, and why there: a hypervisor's guests sit on Linux
bridges, so traffic between two guests never reaches the IP stack's hooks, and
the bridge family cannot use connection tracking on a kernel without
``nf_conntrack_bridge`` (Debian's lab kernel has none). With ``br_netfilter``
(``net.bridge.bridge-nf-call-ip{,6}tables=1``, which the applier sets and checks)
bridged IP packets do pass the ``inet`` hooks, conntrack included, but there the
in and out interface is the bridge, not the guest's tap. So the ruleset is two
tables loaded in one transaction:

* ``bridge haven-sg`` knows the ports: on the way in (prerouting, before
  ``br_netfilter``) it drops what a guest may not send (another MAC, another
  address, a DHCP or router-advertisement server, a VLAN tag, a protocol that is
  not IP, IPv6 or ARP) and marks the packet with the sending port's number; on the
  way to a tap (forward) it adds the receiving port's number to the mark;
* ``inet haven-sg`` decides by the mark, with conntrack: established and related
  packets pass, invalid ones are dropped, a new one passes the sender's egress
  chain (its rules, else dropped) and then the receiver's ingress chain (its rules,
  else dropped: ingress is denied by default).

A mark is ``TAG | receiver << 12 | sender`` (port numbers 1..4095 on a host); a
packet without :data:`TAG` is not a guest's and is left alone, so the host's own
traffic never meets these chains. Remote groups are nft sets (``g4_<id>``,
``g6_<id>``) of their members' addresses: a member joining or leaving is a set
update (:func:`set_update`), not a new ruleset.

Traffic the hypervisor itself sends a guest (its DHCP answers, its metadata
replies) leaves through the bridge's output path, not forward: it is the host's
and is not filtered, as Neutron trusts its own DHCP and metadata agents.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TABLE = "haven-sg"
TAG = 0x5A000000
TAG_MASK = 0xFF000000
PORT_MASK = 0xFFF
MAX_PORTS = PORT_MASK
ICMPV6_ND = ("nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit",
             "nd-neighbor-advert", "mld-listener-query", "mld-listener-report",
             "mld-listener-done", "mld2-listener-report")
ICMPV6_FROM_GUEST = ("nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert",
                     "mld-listener-report", "mld-listener-done", "mld2-listener-report")
PORT_PROTOCOLS = {6: "tcp", 17: "udp", 33: "dccp", 132: "sctp", 136: "udplite"}
NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132,
         "dccp": 33, "udplite": 136}


class CompileError(ValueError):
    """The host's ports cannot be expressed (too many, a bad address): nothing is loaded."""


@dataclass(frozen=True)
class Rule:
    """One security group rule, as the network API stores it (``protocol`` a name or a
    number, None for any; for ICMP the port range is type and code)."""

    direction: str
    ethertype: str
    protocol: str | None = None
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None


@dataclass(frozen=True)
class GuestPort:
    """A port with port security on this hypervisor: its tap, MAC, fixed IPs, and the
    rules of all its groups. ``bridge`` and ``zone`` (1..65535, stable for the port's
    network, e.g. from its segment) put the network's connections in a conntrack zone
    of their own, so two networks with overlapping addresses never share connection
    state; 0 leaves them in the default zone."""

    port_id: str
    tap: str
    mac: str
    fixed_ips: tuple[str, ...]
    rules: tuple[Rule, ...] = ()
    bridge: str = ""
    zone: int = 0


@dataclass(frozen=True)
class HostPorts:
    """Everything one hypervisor enforces: its ports (those with port security) and the
    member addresses of every remote group their rules name."""

    ports: tuple[GuestPort, ...]
    members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def set_names(group_id: str) -> tuple[str, str]:
    """The IPv4 and IPv6 set names of a remote group."""
    key = group_id.replace("-", "")
    return f"g4_{key}", f"g6_{key}"


def link_local(mac: str) -> str:
    """The guest's EUI-64 IPv6 link-local address (it may send from it)."""
    octets = [int(b, 16) for b in mac.split(":")]
    octets[0] ^= 0x02
    eui = [*octets[:3], 0xFF, 0xFE, *octets[3:]]
    return str(ipaddress.IPv6Address(bytes([0xFE, 0x80, *[0] * 6, *eui])))


def _number(protocol: str | None, ethertype: str) -> int | None:
    if protocol is None:
        return None
    number = int(protocol) if protocol.isdigit() else NAMES.get(protocol)
    if number is None:
        raise CompileError(f"protocol {protocol!r} is not one the compiler knows")
    if number == 1 and ethertype == "IPv6":
        return 58  # Neutron: "icmp" in an IPv6 rule means ICMPv6
    return number


def _addresses(ips: Iterable[str], version: int) -> list[str]:
    return sorted(str(a) for a in (ipaddress.ip_address(i) for i in ips) if a.version == version)


def _match(rule: Rule) -> str:
    """The nft match of a rule (without the port's chain context)."""
    family = "ip" if rule.ethertype == "IPv4" else "ip6"
    parts = [f"meta nfproto {'ipv4' if family == 'ip' else 'ipv6'}"]
    peer = "saddr" if rule.direction == "ingress" else "daddr"
    if rule.remote_group_id is not None:
        v4, v6 = set_names(rule.remote_group_id)
        parts.append(f"{family} {peer} @{v4 if family == 'ip' else v6}")
    elif rule.remote_ip_prefix is not None:
        net = ipaddress.ip_network(rule.remote_ip_prefix, strict=False)
        if (net.version == 4) != (family == "ip"):
            raise CompileError(f"prefix {net} in an {rule.ethertype} rule")
        if net.prefixlen:
            parts.append(f"{family} {peer} {net}")
    number = _number(rule.protocol, rule.ethertype)
    low, high = rule.port_range_min, rule.port_range_max
    if number in (1, 58):
        icmp = "icmp" if number == 1 else "icmpv6"
        parts.append(f"meta l4proto {icmp}")
        if low is not None:
            parts.append(f"{icmp} type {low}")
            if high is not None:
                parts.append(f"{icmp} code {high}")
    elif number is not None:
        parts.append(f"meta l4proto {PORT_PROTOCOLS.get(number, number)}")
        if low is not None and number in PORT_PROTOCOLS:
            hi = low if high is None else high
            parts.append(f"th dport {low}" if low == hi else f"th dport {low}-{hi}")
    return " ".join(parts)


def _egress_chain(n: int, port: GuestPort) -> list[str]:
    lines = [f"  chain egress_{n} {{",
             f"    # port {port.port_id} ({port.tap}): what it may start",
             "    meta nfproto ipv4 udp sport 68 udp dport 67 return",
             "    meta nfproto ipv6 udp sport 546 udp dport 547 return",
             f"    meta nfproto ipv6 icmpv6 type {{ {', '.join(ICMPV6_FROM_GUEST)} }} return"]
    lines += [f"    {_match(r)} return" for r in port.rules if r.direction == "egress"]
    lines += ["    drop", "  }"]
    return lines


def _ingress_chain(n: int, port: GuestPort) -> list[str]:
    lines = [f"  chain ingress_{n} {{",
             f"    # port {port.port_id} ({port.tap}): what it accepts (default: nothing)",
             "    meta nfproto ipv4 udp sport 67 udp dport 68 accept",
             "    meta nfproto ipv6 udp sport 547 udp dport 546 accept",
             f"    meta nfproto ipv6 icmpv6 type {{ {', '.join(ICMPV6_ND)} }} accept"]
    lines += [f"    {_match(r)} accept" for r in port.rules if r.direction == "ingress"]
    lines += ["    drop", "  }"]
    return lines


def _from_guest_chain(n: int, port: GuestPort) -> list[str]:
    """Anti-spoofing: the port sends from its MAC and addresses only, or it is dropped."""
    mark = f"0x{TAG | n:08x}"
    v4 = _addresses(port.fixed_ips, 4)
    v6 = [*_addresses(port.fixed_ips, 6), link_local(port.mac)]
    lines = [f"  chain from_{n} {{", f"    # port {port.port_id} ({port.tap})",
             f"    ether saddr != {port.mac.lower()} drop",
             "    ether type != { ip, ip6, arp } drop",
             f"    ether type arp arp saddr ether != {port.mac.lower()} drop",
             "    ether type ip udp sport 67 drop",
             "    ether type ip6 udp sport 547 drop",
             "    ether type ip6 icmpv6 type { nd-router-advert, nd-redirect } drop",
             "    ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 "
             f"udp sport 68 udp dport 67 meta mark set {mark} accept",
             "    ether type ip6 ip6 saddr :: icmpv6 type { nd-neighbor-solicit, "
             f"mld2-listener-report }} meta mark set {mark} accept"]
    if v4:
        lines += [f"    ether type arp arp saddr ip != {{ 0.0.0.0, {', '.join(v4)} }} drop",
                  f"    ether type ip ip saddr != {{ {', '.join(v4)} }} drop"]
    else:
        lines += ["    ether type arp arp saddr ip != 0.0.0.0 drop", "    ether type ip drop"]
    lines += [f"    ether type ip6 ip6 saddr != {{ {', '.join(v6)} }} drop",
              f"    meta mark set {mark} accept", "  }"]
    return lines


def _sets(host: HostPorts) -> list[str]:
    wanted = sorted({r.remote_group_id for p in host.ports for r in p.rules
                     if r.remote_group_id is not None})
    lines: list[str] = []
    for group in wanted:
        members = host.members.get(group, ())
        for name, version, kind in zip(set_names(group), (4, 6), ("ipv4_addr", "ipv6_addr"),
                                       strict=True):
            addresses = _addresses(members, version)
            lines += [f"  set {name} {{", f"    type {kind}"]
            if addresses:
                lines.append(f"    elements = {{ {', '.join(addresses)} }}")
            lines.append("  }")
    return lines


def _zones(ports: list[GuestPort]) -> dict[str, int]:
    """Each bridge's zone; a bridge given two zones cannot be compiled."""
    zones: dict[str, int] = {}
    for p in ports:
        if not p.zone:
            continue
        if not 0 < p.zone <= 0xFFFF or not p.bridge or len(p.bridge) > 15 or '"' in p.bridge:
            raise CompileError(f"port {p.port_id}: zone {p.zone} on bridge {p.bridge!r}")
        if zones.setdefault(p.bridge, p.zone) != p.zone:
            raise CompileError(f"bridge {p.bridge} given zones {zones[p.bridge]} and {p.zone}")
    return zones


def _zone_chains(zones: dict[str, int]) -> list[str]:
    """Packets of a guest bridge (bridged ones reach the inet hooks with the bridge as
    their interface) and the host's packets to it, in the bridge's zone, before
    conntrack looks them up."""
    if not zones:
        return []
    entries = ", ".join(f'"{b}" : {z}' for b, z in sorted(zones.items()))
    return ["  chain zone_in {", "    type filter hook prerouting priority raw; policy accept;",
            f"    ct zone set iifname map {{ {entries} }}", "  }",
            "  chain zone_out {", "    type filter hook output priority raw; policy accept;",
            f"    ct zone set oifname map {{ {entries} }}", "  }"]


def _check(host: HostPorts) -> list[GuestPort]:
    ports = sorted(host.ports, key=lambda p: p.tap)
    if len(ports) > MAX_PORTS:
        raise CompileError(f"{len(ports)} ports: at most {MAX_PORTS} per hypervisor")
    taps = [p.tap for p in ports]
    if len(set(taps)) != len(taps):
        raise CompileError("two ports share a tap name")
    for p in ports:
        if not p.tap or len(p.tap) > 15 or '"' in p.tap:
            raise CompileError(f"bad tap name {p.tap!r}")
        for ip in p.fixed_ips:
            ipaddress.ip_address(ip)
    return ports


def compile_ruleset(host: HostPorts) -> str:
    """The nft script that replaces both tables at once (``nft -f``: one transaction).

    Port numbers follow the tap names' order; they live only in packet marks, so a
    new numbering in a new ruleset is harmless (the whole set of chains changes
    together).
    """
    ports = _check(host)
    numbered = list(enumerate(ports, start=1))
    tag = f"0x{TAG:08x}"
    inet = [f"table inet {TABLE} {{", *_sets(host), *_zone_chains(_zones(ports))]
    for n, port in numbered:
        inet += _egress_chain(n, port) + _ingress_chain(n, port)
    egress_map = ", ".join(f"0x{n:03x} : jump egress_{n}" for n, _ in numbered)
    ingress_map = ", ".join(f"0x{n << 12:06x} : jump ingress_{n}" for n, _ in numbered)
    inet += ["  chain guest {",
             f"    meta mark & 0x{TAG_MASK:08x} != {tag} accept",
             "    ct state established,related accept",
             "    ct state invalid drop"]
    if numbered:
        inet += [f"    meta mark & 0x{PORT_MASK:03x} vmap {{ {egress_map} }}",
                 f"    meta mark & 0x{PORT_MASK << 12:06x} vmap {{ {ingress_map} }}"]
    inet += ["    accept", "  }",
             "  chain forward {", "    type filter hook forward priority filter; policy accept;",
             "    jump guest", "  }",
             "  chain input {", "    type filter hook input priority filter; policy accept;",
             "    jump guest", "  }", "}"]
    from_map = ", ".join(f'"{p.tap}" : jump from_{n}' for n, p in numbered)
    to_map = ", ".join(f'"{p.tap}" : jump to_{n}' for n, p in numbered)
    bridge = [f"table bridge {TABLE} {{"]
    for n, port in numbered:
        bridge += _from_guest_chain(n, port)
        # the receiver joins a guest's mark; any other mark (not ours, maybe with bits
        # that would name a sender) is replaced, so a packet from outside never runs a
        # guest's egress chain
        bridge += [f"  chain to_{n} {{",
                   f"    meta mark & 0x{TAG_MASK:08x} == {tag} "
                   f"meta mark set meta mark | 0x{TAG | n << 12:08x} accept",
                   f"    meta mark set 0x{TAG | n << 12:08x} accept", "  }"]
    bridge += ["  chain prerouting {",
               "    type filter hook prerouting priority -200; policy accept;",
               f"    meta mark & 0x{TAG_MASK:08x} == {tag} meta mark set 0"]
    if numbered:
        bridge.append(f"    iifname vmap {{ {from_map} }}")
    bridge += ["  }", "  chain forward {",
               "    type filter hook forward priority -200; policy accept;"]
    if numbered:
        bridge.append(f"    oifname vmap {{ {to_map} }}")
    bridge += ["  }", "}"]
    header = [f"table inet {TABLE}", f"delete table inet {TABLE}",
              f"table bridge {TABLE}", f"delete table bridge {TABLE}"]
    return "\n".join(header + inet + bridge) + "\n"


def set_update(members: Mapping[str, Iterable[str]]) -> str:
    """The nft script that sets each remote group's members (one transaction; the
    groups' sets must exist, i.e. be named by the loaded ruleset)."""
    lines: list[str] = []
    for group in sorted(members):
        addresses = list(members[group])
        for name, version in zip(set_names(group), (4, 6), strict=True):
            lines.append(f"flush set inet {TABLE} {name}")
            chosen = _addresses(addresses, version)
            if chosen:
                lines.append(f"add element inet {TABLE} {name} {{ {', '.join(chosen)} }}")
    return "\n".join(lines) + "\n"


def remote_groups(host: HostPorts) -> set[str]:
    """The remote groups the host's rules name (whose sets the ruleset has)."""
    return {r.remote_group_id for p in host.ports for r in p.rules
            if r.remote_group_id is not None}

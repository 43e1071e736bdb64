"""Cutting the tracked connections a port's new ruleset no longer admits.

The ruleset (:mod:`core.network.agent.secgroup_nft`) decides on a connection's first
packet only: ``ct state established,related accept`` lets every later packet
through. So a rule deleted, a group taken off a port, or a member leaving a remote
group would stop new connections and leave the ones it admitted running (Neutron
deletes their conntrack entries for this reason). After each ruleset is loaded, the
agent asks :class:`ConntrackSweeper` to look at the tracked connections of every port
whose filter changed (all of them on its first round) and to delete the entries the
port's rules, as now loaded, would not admit:

* an entry whose original direction leaves the port (its source is one of the
  port's addresses) must pass the port's egress rules; one that comes to it, its
  ingress rules; the traffic the chains always let through (DHCP, neighbour
  discovery) is kept;
* only the port's addresses in the port's conntrack zone are listed
  (``conntrack -L -w ZONE -s|-d ADDRESS``), never the host's whole table, and each
  entry is deleted by its own original tuple.

A connection still admitted by another rule is not touched. Once its entry is
gone, a connection's next packet is a new one to conntrack (``nf_conntrack_tcp_loose``
picks up a TCP stream in the middle): the rules decide it again and drop it.

Which ports changed is remembered in memory between rounds (a fingerprint of their
addresses, zone, rules and remote groups' members); a restarted agent sweeps every
port once. A sweep that fails (``conntrack`` missing or failing) is retried next
round and leaves the loaded ruleset alone: new connections are filtered either way.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.network.agent.secgroup_apply import ApplyError, Runner, run_local
from core.network.agent.secgroup_nft import (
    ICMPV6_FROM_GUEST,
    ICMPV6_ND,
    NAMES,
    PORT_PROTOCOLS,
    GuestPort,
    HostPorts,
    Rule,
    link_local,
)

# ICMPv6 type numbers of the names the chains always let through
ICMPV6_TYPES = {"nd-router-solicit": 133, "nd-router-advert": 134, "nd-neighbor-solicit": 135,
                "nd-neighbor-advert": 136, "mld-listener-query": 130,
                "mld-listener-report": 131, "mld-listener-done": 132,
                "mld2-listener-report": 143}
ALWAYS_OUT = frozenset(ICMPV6_TYPES[n] for n in ICMPV6_FROM_GUEST)
ALWAYS_IN = frozenset(ICMPV6_TYPES[n] for n in ICMPV6_ND)
_PAIR = re.compile(r"^([a-z-]+)=(\S+)$")

Fingerprint = tuple[object, ...]


@dataclass(frozen=True)
class Flow:
    """One conntrack entry: its original direction's tuple and its zone."""

    version: int
    protocol: int
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    zone: int = 0


def parse(line: str, version: int) -> Flow | None:
    """An entry of ``conntrack -L`` (default output), or None for a line that is not
    one (a summary, an empty line)."""
    tokens = line.split()
    if len(tokens) < 4 or not tokens[1].isdigit():
        return None
    first: dict[str, str] = {}
    zone = 0
    for token in tokens[2:]:
        m = _PAIR.match(token)
        if m is None:
            continue
        key, value = m.groups()
        if key == "zone" or key == "zone-orig":
            zone = int(value)
        elif key not in first:  # the original tuple comes first
            first[key] = value
    if "src" not in first or "dst" not in first:
        return None

    def num(key: str) -> int | None:
        return int(first[key]) if key in first else None

    return Flow(version=version, protocol=int(tokens[1]), src=first["src"], dst=first["dst"],
                sport=num("sport"), dport=num("dport"), icmp_type=num("type"),
                icmp_code=num("code"), icmp_id=num("id"), zone=zone)


def rule_protocol(rule: Rule) -> int | None:
    """The rule's protocol number (Neutron: ``icmp`` in an IPv6 rule is ICMPv6);
    None for any protocol. ValueError for a name the compiler would refuse too."""
    if rule.protocol is None:
        return None
    number = int(rule.protocol) if rule.protocol.isdigit() else NAMES.get(rule.protocol)
    if number is None:
        raise ValueError(f"protocol {rule.protocol!r} is not one the compiler knows")
    return 58 if number == 1 and rule.ethertype == "IPv6" else number


def _same(a: str, b: str) -> bool:
    return ipaddress.ip_address(a) == ipaddress.ip_address(b)


def rule_admits(rule: Rule, direction: str, flow: Flow, peer: str,
                members: Mapping[str, Sequence[str]]) -> bool:
    """Whether ``rule`` lets ``flow``'s first packet through (as its nft match does)."""
    if rule.direction != direction or rule.ethertype != f"IPv{flow.version}":
        return False
    if rule.remote_group_id is not None:
        if not any(_same(peer, m) for m in members.get(rule.remote_group_id, ())):
            return False
    elif rule.remote_ip_prefix is not None:
        net = ipaddress.ip_network(rule.remote_ip_prefix, strict=False)
        if ipaddress.ip_address(peer) not in net:
            return False
    number = rule_protocol(rule)
    if number is None:
        return True
    if flow.protocol != number:
        return False
    low, high = rule.port_range_min, rule.port_range_max
    if number in (1, 58):
        return (low is None or flow.icmp_type == low) and (
            low is None or high is None or flow.icmp_code == high)
    if low is not None and number in PORT_PROTOCOLS:
        return flow.dport is not None and low <= flow.dport <= (low if high is None else high)
    return True


def _always(direction: str, flow: Flow) -> bool:
    """What the port's chains let through whatever its rules (DHCP, neighbour discovery)."""
    if flow.protocol == 17:
        client, server = (68, 67) if flow.version == 4 else (546, 547)
        pair = (client, server) if direction == "egress" else (server, client)
        return (flow.sport, flow.dport) == pair
    if flow.protocol == 58 and flow.version == 6:
        return flow.icmp_type in (ALWAYS_OUT if direction == "egress" else ALWAYS_IN)
    return False


def addresses(port: GuestPort) -> list[str]:
    """The addresses the port may use: its fixed IPs and its IPv6 link-local one."""
    return [*port.fixed_ips, link_local(port.mac)]


def admitted(port: GuestPort, flow: Flow, members: Mapping[str, Sequence[str]]) -> bool:
    """Whether the port's rules, as loaded now, admit ``flow`` (from or to the port)."""
    own = addresses(port)
    checks = []
    if any(_same(flow.src, a) for a in own):
        checks.append(("egress", flow.dst))
    if any(_same(flow.dst, a) for a in own):
        checks.append(("ingress", flow.src))
    for direction, peer in checks:
        if not (_always(direction, flow) or any(
                rule_admits(r, direction, flow, peer, members) for r in port.rules)):
            return False
    return True


def fingerprint(port: GuestPort, members: Mapping[str, Sequence[str]]) -> Fingerprint:
    """What decides which of the port's connections its filter admits."""
    groups = sorted({r.remote_group_id for r in port.rules if r.remote_group_id is not None})
    return (tuple(addresses(port)), port.zone, frozenset(port.rules),
            tuple((g, tuple(sorted(members.get(g, ())))) for g in groups))


def delete_args(flow: Flow) -> list[str]:
    """``conntrack -D`` filters naming exactly the flow's original tuple."""
    args = ["-f", f"ipv{flow.version}", "-w", str(flow.zone), "-p", str(flow.protocol),
            "-s", flow.src, "-d", flow.dst]
    if flow.sport is not None and flow.dport is not None:
        args += ["--sport", str(flow.sport), "--dport", str(flow.dport)]
    elif flow.icmp_type is not None and flow.protocol in (1, 58):
        args += ["--icmp-type" if flow.protocol == 1 else "--icmpv6-type",
                 str(flow.icmp_type)]
        if flow.icmp_code is not None:
            args += ["--icmp-code" if flow.protocol == 1 else "--icmpv6-code",
                     str(flow.icmp_code)]
        if flow.icmp_id is not None:
            args += ["--icmp-id" if flow.protocol == 1 else "--icmpv6-id", str(flow.icmp_id)]
    return args


class ConntrackSweeper:
    """Deletes the conntrack entries of a hypervisor's ports that their loaded rules no
    longer admit (see the module docstring). ``run`` as the applier's (a namespace in
    the tests)."""

    def __init__(self, run: Runner = run_local, conntrack: str = "conntrack") -> None:
        self.run = run
        self.conntrack = conntrack
        self._seen: dict[str, Fingerprint] = {}

    def flows(self, port: GuestPort) -> list[Flow]:
        """The tracked connections from or to the port's addresses, in its zone."""
        found: dict[Flow, None] = {}
        for address in addresses(port):
            version = ipaddress.ip_address(address).version
            for side in ("-s", "-d"):
                out = self.run([self.conntrack, "-L", "-f", f"ipv{version}", "-w",
                                str(port.zone), side, address], None)
                for line in out.splitlines():
                    flow = parse(line, version)
                    if flow is not None and flow.zone == port.zone:
                        found[flow] = None
        return list(found)

    def delete(self, flow: Flow) -> None:
        """Delete one entry; one that is gone already (it ended) is fine."""
        try:
            self.run([self.conntrack, "-D", *delete_args(flow)], None)
        except ApplyError:
            if any(f == flow for f in self._list_like(flow)):
                raise

    def _list_like(self, flow: Flow) -> list[Flow]:
        out = self.run([self.conntrack, "-L", *delete_args(flow)], None)
        return [f for line in out.splitlines() if (f := parse(line, flow.version))]

    def sweep(self, port: GuestPort, members: Mapping[str, Sequence[str]]) -> list[Flow]:
        """Delete the port's entries its rules do not admit; the flows deleted."""
        cut = [f for f in self.flows(port) if not admitted(port, f, members)]
        for flow in cut:
            self.delete(flow)
        return cut

    def sweep_changed(self, host: HostPorts) -> list[Flow]:
        """:meth:`sweep` every port whose fingerprint changed since the last complete
        call (every port on the first). Raises ApplyError (nothing remembered: the next
        call sweeps the same ports again)."""
        seen: dict[str, Fingerprint] = {}
        cut: list[Flow] = []
        for port in host.ports:
            mark = fingerprint(port, host.members)
            if self._seen.get(port.port_id) != mark:
                cut += self.sweep(port, host.members)
            seen[port.port_id] = mark
        self._seen = seen
        return cut

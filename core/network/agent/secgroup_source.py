"""From the network API's JSON (Neutron's shapes) to what the compiler takes.

The agent reads its hypervisor's ports (``GET /v2.0/ports?binding:host_id=HOST``),
the groups they use (``GET /v2.0/security-groups?id=...``) and, for each remote
group a rule names, the ports in it (their fixed IPs are the group's members);
:func:`host_ports` turns that into :class:`~core.network.agent.secgroup_nft.HostPorts`.
Ports with port security off, and the cloud's own devices (``network:*`` owners:
router legs, DHCP), get no chains (they are not filtered, as in Neutron); a port
with port security and no groups gets chains that let nothing in or out but DHCP
and neighbour discovery (Neutron's "no groups, no traffic").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from core.common.hostnet import tap_name
from core.network.agent.secgroup_nft import GuestPort, HostPorts, Rule


def rules_of(group: Mapping[str, Any]) -> list[Rule]:
    return [Rule(direction=r["direction"], ethertype=r["ethertype"], protocol=r["protocol"],
                 port_range_min=r["port_range_min"], port_range_max=r["port_range_max"],
                 remote_ip_prefix=r["remote_ip_prefix"], remote_group_id=r["remote_group_id"])
            for r in group["security_group_rules"]]


def members(ports: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Each group's member addresses: the fixed IPs of the ports in it."""
    out: dict[str, list[str]] = {}
    for port in ports:
        for group in port.get("security_groups", []):
            out.setdefault(group, []).extend(ip["ip_address"] for ip in port["fixed_ips"])
    return {g: tuple(sorted(set(ips))) for g, ips in out.items()}


def host_ports(local: Iterable[Mapping[str, Any]], groups: Iterable[Mapping[str, Any]],
               member_ports: Iterable[Mapping[str, Any]],
               tap: Callable[[str], str] = tap_name,
               bridge: Callable[[Mapping[str, Any]], tuple[str, int]] | None = None
               ) -> HostPorts:
    """The compiler's input for the ``local`` ports, given their ``groups`` (with rules)
    and the ports of every remote group (``member_ports``, local ones included).
    ``bridge`` names a port's bridge and conntrack zone (the data path knows them)."""
    by_id = {g["id"]: rules_of(g) for g in groups}
    out = []
    for port in local:
        if not port.get("port_security_enabled", True) or str(
                port.get("device_owner", "")).startswith("network:"):
            continue  # unfiltered, as Neutron: no port security, or the cloud's own device
        try:
            rules = [r for g in port["security_groups"] for r in by_id[g]]
        except KeyError as exc:  # fail closed: a group we were not given
            raise ValueError(f"port {port['id']} uses group {exc} whose rules are "
                             "missing") from None
        where, zone = bridge(port) if bridge is not None else ("", 0)
        out.append(GuestPort(port_id=port["id"], tap=tap(port["id"]),
                             mac=port["mac_address"],
                             fixed_ips=tuple(ip["ip_address"] for ip in port["fixed_ips"]),
                             rules=tuple(rules), bridge=where, zone=zone))
    return HostPorts(tuple(out), members(member_ports))

"""What the network agent reads from and writes to the database for its host.

Every write here touches only rows bound to this host (``Port.host_id == host``):
the DHCP ports it makes and removes, and the ``status`` of its ports, each set
with a compare on the binding so a port that moved to another hypervisor
meanwhile (evacuation) is never marked by the host it left.

The DHCP port of a network on a host (Neutron's ``network:dhcp`` port, one per
DHCP agent) is the service namespace's leg on the network: it holds the address
dnsmasq answers from and the next hop of the metadata route. It exists while the
host has a guest port on the network and is removed with the last one.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core.common.faults import Conflict
from core.common.timeutil import now
from core.network import ipam
from core.network.agent.dhcp import DhcpPort, DhcpSubnet, FixedIp
from core.network.models import IPAllocation, Network, Port, Subnet
from core.network.secgroup_models import PortSecurity, PortSecurityGroup, SecurityGroupRule

LOG = logging.getLogger(__name__)

DHCP_OWNER = "network:dhcp"
CLOUD_OWNER_PREFIX = "network:"


def is_guest(port: Port) -> bool:
    """A port a guest (or anything but the cloud's own devices) uses."""
    return not port.device_owner.startswith(CLOUD_OWNER_PREFIX)


@dataclass(frozen=True)
class ServiceNet:
    """One network's service namespace on this host, as the database says it."""

    network_id: str
    dhcp_port_id: str
    dhcp_mac: str
    addresses: tuple[str, ...]  # CIDR notation, one per DHCP subnet
    mtu: int
    subnets: tuple[DhcpSubnet, ...]  # IPv4, DHCP enabled
    ports: tuple[DhcpPort, ...]  # this host's guest ports on the network


def _mac() -> str:
    return "fa:16:3e:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))


def _dhcp_subnets(session: Session, network_id: str) -> list[Subnet]:
    subnets = session.scalars(select(Subnet).where(Subnet.network_id == network_id,
                                                   Subnet.enable_dhcp.is_(True))
                              .order_by(Subnet.id))
    return [s for s in subnets if ipaddress.ip_network(s.cidr, strict=False).version == 4]


def _fixed(session: Session, port_ids: Iterable[str]) -> dict[str, list[IPAllocation]]:
    ids = list(port_ids)
    out: dict[str, list[IPAllocation]] = {i: [] for i in ids}
    if ids:
        for a in session.scalars(select(IPAllocation).where(IPAllocation.port_id.in_(ids))
                                 .order_by(IPAllocation.ip_address)):
            out[a.port_id].append(a)
    return out


def _remove_port(session: Session, port_id: str) -> None:
    session.execute(delete(IPAllocation).where(IPAllocation.port_id == port_id))
    session.execute(delete(Port).where(Port.id == port_id))


def sync_service_ports(session: Session, host: str) -> list[ServiceNet]:
    """Make one DHCP port per network this host has a guest port on (addresses in
    each IPv4 DHCP subnet, allocated by IPAM), remove the others of this host, and
    return what each network's service namespace must hold."""
    bound = list(session.scalars(select(Port).where(Port.host_id == host).order_by(Port.id)))
    guest_nets = sorted({p.network_id for p in bound if is_guest(p)})
    dhcp = {p.network_id: p for p in bound if p.device_owner == DHCP_OWNER}
    for net_id, port in sorted(dhcp.items()):
        if net_id not in guest_nets:
            LOG.info("network %s: no port left on %s, removing DHCP port %s", net_id, host,
                     port.id)
            _remove_port(session, port.id)
    out: list[ServiceNet] = []
    for net_id in guest_nets:
        net = session.get(Network, net_id)
        if net is None:
            continue
        found = dhcp.get(net_id)
        if found is not None:
            port = found
        else:
            ts = now()
            port = Port(network_id=net_id, project_id=net.project_id, mac_address=_mac(),
                        device_id=f"dhcp-{host}", device_owner=DHCP_OWNER, host_id=host,
                        status="DOWN", admin_state_up=True, name="", description="",
                        created_at=ts, updated_at=ts)
            session.add(port)
            session.flush()
            LOG.info("network %s: DHCP port %s made for %s", net_id, port.id, host)
        subnets = _dhcp_subnets(session, net_id)
        held = {a.subnet_id: a.ip_address for a in _fixed(session, [port.id])[port.id]}
        dhcp_ids = {s.id for s in subnets}
        for gone in sorted(set(held) - dhcp_ids):  # DHCP switched off: Neutron frees it
            LOG.info("network %s: subnet %s has no DHCP now, DHCP port %s frees %s", net_id,
                     gone, port.id, held.pop(gone))
            session.execute(delete(IPAllocation).where(IPAllocation.port_id == port.id,
                                                       IPAllocation.subnet_id == gone))
        addresses = []
        for subnet in subnets:
            ip = held.get(subnet.id)
            if ip is None:
                try:
                    ip = ipam.allocate(session, subnet, port.id)
                except Conflict as exc:  # full: this subnet gets no DHCP here
                    LOG.error("network %s: no address for the DHCP port: %s", net_id, exc)
                    continue
            prefix = ipaddress.ip_network(subnet.cidr, strict=False).prefixlen
            addresses.append(f"{ip}/{prefix}")
        guests = [p for p in bound if p.network_id == net_id and is_guest(p)]
        fixed = _fixed(session, [p.id for p in guests])
        out.append(ServiceNet(
            network_id=net_id, dhcp_port_id=port.id, dhcp_mac=port.mac_address.lower(),
            addresses=tuple(addresses), mtu=net.mtu,
            subnets=tuple(DhcpSubnet(s.id, s.cidr, s.gateway_ip) for s in subnets),
            ports=tuple(DhcpPort(p.id, p.mac_address.lower(),
                                 tuple(FixedIp(a.ip_address, a.subnet_id) for a in fixed[p.id]))
                        for p in guests)))
    return out


def secgroup_inputs(session: Session, host: str
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """This host's guest ports, their groups with rules, and the ports of every remote
    group those rules name, in the network API's shapes (what
    :func:`~core.network.agent.secgroup_source.host_ports` takes)."""
    local = [p for p in session.scalars(select(Port).where(Port.host_id == host)
                                        .order_by(Port.id)) if is_guest(p)]
    local_views = _port_views(session, local)
    group_ids = sorted({g for v in local_views for g in v["security_groups"]})
    rules = list(session.scalars(select(SecurityGroupRule).where(
        SecurityGroupRule.security_group_id.in_(group_ids)).order_by(SecurityGroupRule.id))
                 ) if group_ids else []
    groups = [{"id": g, "security_group_rules": [
        {"direction": r.direction, "ethertype": r.ethertype, "protocol": r.protocol,
         "port_range_min": r.port_range_min, "port_range_max": r.port_range_max,
         "remote_ip_prefix": r.remote_ip_prefix, "remote_group_id": r.remote_group_id}
        for r in rules if r.security_group_id == g]} for g in group_ids]
    remote = sorted({r.remote_group_id for r in rules if r.remote_group_id})
    members: list[dict[str, Any]] = []
    if remote:
        member_ids = sorted(set(session.scalars(select(PortSecurityGroup.port_id).where(
            PortSecurityGroup.security_group_id.in_(remote)))))
        member_ports = list(session.scalars(select(Port).where(Port.id.in_(member_ids))
                                            .order_by(Port.id))) if member_ids else []
        members = _port_views(session, member_ports)
    return local_views, groups, members


def _port_views(session: Session, ports: list[Port]) -> list[dict[str, Any]]:
    ids = [p.id for p in ports]
    fixed = _fixed(session, ids)
    groups: dict[str, list[str]] = {i: [] for i in ids}
    enabled: dict[str, bool] = {}
    if ids:
        for b in session.scalars(select(PortSecurityGroup).where(
                PortSecurityGroup.port_id.in_(ids))):
            groups[b.port_id].append(b.security_group_id)
        enabled = {s.port_id: bool(s.port_security_enabled) for s in session.scalars(
            select(PortSecurity).where(PortSecurity.port_id.in_(ids)))}
    return [{"id": p.id, "network_id": p.network_id, "mac_address": p.mac_address,
             "device_owner": p.device_owner,
             "fixed_ips": [{"ip_address": a.ip_address, "subnet_id": a.subnet_id}
                           for a in fixed[p.id]],
             "security_groups": sorted(groups[p.id]),
             "port_security_enabled": enabled.get(p.id, True)} for p in ports]


def set_statuses(session: Session, host: str, statuses: Mapping[str, str]) -> list[str]:
    """Set each port's status if it is still bound to ``host`` and differs; the ports
    changed."""
    changed = []
    for port_id, status in sorted(statuses.items()):
        result = session.execute(update(Port).where(
            Port.id == port_id, Port.host_id == host, Port.status != status).values(
            status=status, updated_at=now()))
        if getattr(result, "rowcount", 0):
            changed.append(port_id)
    return changed


def cloud_ports(session: Session, host: str) -> set[str]:
    """The cloud's own devices bound here (DHCP ports, router interfaces and gateways):
    never filtered, as in Neutron; the router's are plugged by the router's shard."""
    return {p.id for p in session.scalars(select(Port).where(Port.host_id == host))
            if not is_guest(p)}


def guests_not_in(session: Session, host: str, carried: set[str]) -> list[str]:
    """Guest ports bound here that the data path does not carry (admin down, or a
    network without a segment): they are DOWN."""
    return [p.id for p in session.scalars(select(Port).where(Port.host_id == host))
            if is_guest(p) and p.id not in carried]

"""What routers and floating IPs share: their ports, the router lock, and the checks
the other network resources make about them (a port or network in L3 use).

Routers and floating IPs hold addresses through ports of their own (Neutron's
``network:router_gateway``, ``network:router_interface`` and ``network:floatingip``
owners), so IPAM keeps every address single, and deleting a subnet or a network
still in their use is refused by the ports' allocations, as for any port.
"""

from __future__ import annotations

import ipaddress
import random

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.common.faults import Conflict
from core.common.timeutil import now
from core.network.l3_models import FLOATING, GATEWAY, INTERFACE, FloatingIP, Router, RouterPort
from core.network.models import IPAllocation, Network, Port, Subnet


def lock_router(s: Session, router_id: str) -> None:
    """Write the router's row before reading what a change depends on.

    Every change about one router (its gateway, an interface, a floating IP
    associated through it) starts here, so two of them queue: InnoDB holds the
    row lock to the commit (the second then reads the first one's result, READ
    COMMITTED), Galera fails the later certification (the request is retried),
    SQLite takes its write lock.
    """
    s.execute(update(Router).where(Router.id == router_id).values(
        revision_number=Router.revision_number + 1, updated_at=now()))


def router_ports(s: Session, router_id: str, port_type: str) -> list[Port]:
    return list(s.scalars(select(Port).join(RouterPort, RouterPort.port_id == Port.id).where(
        RouterPort.router_id == router_id, RouterPort.port_type == port_type)
        .order_by(Port.created_at, Port.id)))


def gateway_port(s: Session, router_id: str) -> Port | None:
    ports = router_ports(s, router_id, GATEWAY)
    return ports[0] if ports else None


def port_subnets(s: Session, port_id: str) -> list[Subnet]:
    return list(s.scalars(select(Subnet).join(IPAllocation, IPAllocation.subnet_id == Subnet.id)
                          .where(IPAllocation.port_id == port_id).distinct()))


def router_subnets(s: Session, router_id: str) -> list[Subnet]:
    """Every subnet the router has a leg in: its interfaces' subnets and all the subnets
    of its gateway's network (Neutron's ``_check_for_dup_router_subnets`` set)."""
    out = [sub for p in router_ports(s, router_id, INTERFACE) for sub in port_subnets(s, p.id)]
    gw = gateway_port(s, router_id)
    if gw is not None:
        out += list(s.scalars(select(Subnet).where(Subnet.network_id == gw.network_id)))
    return out


def overlapping(existing: list[Subnet], new: list[Subnet]) -> tuple[Subnet, Subnet] | None:
    """The first pair (old, new) of subnets whose ranges overlap, if any."""
    for old in existing:
        for sub in new:
            if ipaddress.ip_network(old.cidr).overlaps(ipaddress.ip_network(sub.cidr)):
                return old, sub
    return None


def new_service_port(s: Session, network: Network, project_id: str | None, device_id: str,
                     device_owner: str) -> Port:
    """A port a router or floating IP holds (its addresses are allocated by the caller)."""
    ts = now()
    for _ in range(8):
        mac = "fa:16:3e:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))
        port = Port(name="", network_id=network.id, project_id=project_id, mac_address=mac,
                    device_id=device_id, device_owner=device_owner, host_id="", status="DOWN",
                    admin_state_up=True, description="", created_at=ts, updated_at=ts)
        try:
            with s.begin_nested():
                s.add(port)
            return port
        except IntegrityError:
            continue  # the MAC is taken on this network: draw another
    raise Conflict(f"Could not find a free MAC address on network {network.id}.")


def service_use(s: Session, port_id: str) -> str | None:
    """The L3 device owner a port serves (router gateway or interface, floating IP),
    or None: such a port is deleted only through its router or floating IP."""
    kind = s.scalar(select(RouterPort.port_type).where(RouterPort.port_id == port_id))
    if kind is not None:
        return str(kind)
    if s.scalar(select(FloatingIP.id).where(FloatingIP.floating_port_id == port_id)):
        return FLOATING
    return None


def before_port_delete(s: Session, port: Port) -> None:
    """Called by the port API before it deletes ``port``: a router's or floating IP's
    own port is refused (Neutron's 409 ServicePortInUse); floating IPs associated
    with the port are disassociated (as Neutron does when a server's port goes)."""
    use = service_use(s, port.id)
    if use is not None:
        raise Conflict(f"Port {port.id} cannot be deleted directly via the port API: "
                       f"has device owner {use}.")
    s.execute(update(FloatingIP).where(FloatingIP.fixed_port_id == port.id).values(
        fixed_port_id=None, fixed_ip_address=None, router_id=None, updated_at=now()))


def external_in_use(s: Session, network_id: str) -> bool:
    """True while routers have their gateway, or floating IPs their address, on the
    network: it must then stay external (Neutron's 409 ExternalNetworkInUse)."""
    gateways = s.scalar(select(RouterPort.port_id).join(Port, Port.id == RouterPort.port_id)
                        .where(Port.network_id == network_id,
                               RouterPort.port_type == GATEWAY).limit(1))
    fips = s.scalar(select(FloatingIP.id).where(
        FloatingIP.floating_network_id == network_id).limit(1))
    return gateways is not None or fips is not None

"""A router's :class:`~core.network.routerns.plan.RouterSpec`, read from the database.

The network service's tables say everything the data plane needs: the gateway and
interface ports (MAC, address, subnet), the floating IPs associated through the
router, ``enable_snat`` and ``admin_state_up``. Which bridge carries a network on
this node is the L2 data path's business: the caller passes ``bridge_for``.

:func:`bind_to` binds a router's ports (``binding:host_id``) to the node carrying
it, as Neutron's L3 agent does: that node's network agent then carries the
router's networks (their bridges, VXLAN devices, uplinks) and marks the ports
``ACTIVE`` once the router's devices are plugged, and every other hypervisor sends
the router's MACs to that node's tunnel endpoint. A port bound elsewhere before (a
failover) is set ``DOWN`` in the same write, so the old node's ``ACTIVE`` is never
taken for the new node's plugging.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.common.timeutil import now
from core.network import l3
from core.network.l3_models import INTERFACE, FloatingIP, Router
from core.network.models import IPAllocation, Port, Subnet
from core.network.routerns.plan import FloatingMap, Gateway, Leg, RouterSpec


def namespace_of(router_id: str) -> str:
    """Neutron's name for a router's namespace."""
    return f"qrouter-{router_id}"


def router_port_list(s: Session, router_id: str) -> list[Port]:
    """The router's gateway port (if any), then its interfaces."""
    gateway = l3.gateway_port(s, router_id)
    return ([gateway] if gateway is not None else []) + l3.router_ports(s, router_id, INTERFACE)


def bind_to(s: Session, router_id: str, host: str) -> list[str]:
    """Bind every port of the router to ``host``; returns the ids of those that moved."""
    moved = []
    for port in router_port_list(s, router_id):
        if port.host_id != host:
            port.host_id, port.status, port.updated_at = host, "DOWN", now()
            moved.append(port.id)
    s.flush()
    return moved


def _leg(s: Session, port: Port, bridge_for: Callable[[str], str]) -> tuple[Leg, Subnet]:
    row = s.execute(select(IPAllocation.ip_address, Subnet).join(
        Subnet, Subnet.id == IPAllocation.subnet_id).where(IPAllocation.port_id == port.id)
        .order_by(IPAllocation.ip_address)).first()
    if row is None:
        raise LookupError(f"router port {port.id} has no address")
    address, subnet = row
    prefixlen = ipaddress.ip_network(subnet.cidr).prefixlen
    return Leg(port.id, port.mac_address, address, prefixlen, bridge_for(port.network_id)), subnet


def router_spec(s: Session, router_id: str, bridge_for: Callable[[str], str],
                namespace: str | None = None) -> RouterSpec:
    """The router as its data plane must be (LookupError: no such router)."""
    router = s.get(Router, router_id)
    if router is None:
        raise LookupError(f"router {router_id} does not exist")
    gateway = None
    gw_port = l3.gateway_port(s, router_id)
    if gw_port is not None:
        leg, subnet = _leg(s, gw_port, bridge_for)
        gateway = Gateway(leg.port_id, leg.mac, leg.address, leg.prefixlen, leg.bridge,
                          subnet.gateway_ip)
    interfaces = tuple(_leg(s, p, bridge_for)[0]
                       for p in l3.router_ports(s, router_id, INTERFACE))
    fips = tuple(FloatingMap(f.floating_ip_address, f.fixed_ip_address)
                 for f in s.scalars(select(FloatingIP).where(
                     FloatingIP.router_id == router_id,
                     FloatingIP.fixed_ip_address.is_not(None)).order_by(FloatingIP.id))
                 if f.fixed_ip_address is not None)
    return RouterSpec(router_id, namespace or namespace_of(router_id), gateway, interfaces,
                      fips, router.enable_snat, router.admin_state_up)

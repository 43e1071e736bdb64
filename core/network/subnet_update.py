"""Subnet update (``PUT /v2.0/subnets/{id}``), as Neutron's ``update_subnet`` does it.

Only what Haven stores can change: ``name``, ``description``, ``enable_dhcp``,
``gateway_ip`` and the allocation pools (the list given replaces the subnet's, checked
as at create: :mod:`core.network.allocation_pools`). Everything is checked against the
subnet as it will be before anything is assigned, so a refused update leaves the row
as it was (and the request's one transaction rolls back all the same). Attributes
Neutron makes read-only answer its "Cannot update read-only attribute" 400; ones
Neutron updates but Haven has no column for (``dns_nameservers``, ``host_routes``,
``service_types``) are a 400 saying so unless they ask for what Haven is (none), so
nothing a client asked for is silently dropped.

Addresses already held outside the changed pools stay held (Neutron does the same):
pools only say what automatic allocation hands out next.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.common.faults import BadRequest, Conflict
from core.network import allocation_pools, ipam
from core.network.allocation_pools import Pool
from core.network.models import IPAllocation, Subnet

UPDATABLE = frozenset({"name", "description", "enable_dhcp", "gateway_ip",
                       "allocation_pools"})
#: Neutron updates these; Haven keeps none of them (its view shows them empty).
NOT_STORED = frozenset({"dns_nameservers", "host_routes", "service_types"})
#: Neutron's subnet attributes that a PUT may not name (``allow_put: False``); Haven
#: treats ``segment_id`` the same (a subnet's segment is its network's).
READ_ONLY = frozenset({"id", "network_id", "tenant_id", "project_id", "cidr", "ip_version",
                       "subnetpool_id", "ipv6_ra_mode", "ipv6_address_mode", "segment_id",
                       "prefixlen", "use_default_subnetpool", "created_at", "updated_at",
                       "revision_number", "tags", "standard_attr_id"})


@dataclass(frozen=True)
class SubnetChange:
    """A checked update: the values to assign (None: keep the stored one)."""

    name: str | None = None
    description: str | None = None
    enable_dhcp: bool | None = None
    gateway_changed: bool = False
    gateway_ip: str | None = None
    pools: list[Pool] | None = None

    def apply(self, sub: Subnet) -> None:
        if self.name is not None:
            sub.name = self.name
        if self.description is not None:
            sub.description = self.description
        if self.enable_dhcp is not None:
            sub.enable_dhcp = self.enable_dhcp
        if self.gateway_changed:
            sub.gateway_ip = self.gateway_ip
        if self.pools is not None:
            ipam.set_pools(sub, self.pools)


def _text(body: dict[str, Any], key: str, limit: int) -> str:
    value = body[key]
    if not isinstance(value, str):
        raise BadRequest(f"Invalid input for field '{key}': {value!r} is not a string.")
    if len(value) > limit:
        raise BadRequest(f"Invalid input for field '{key}': longer than {limit} characters.")
    return value


def _gateway(value: Any, cidr: ipaddress.IPv4Network) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"Invalid input for field 'gateway_ip': {value!r} is not an "
                         "IP address.")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise BadRequest(f"Invalid input for field 'gateway_ip': {value!r} is not an "
                         "IP address.") from None
    if addr not in cidr:
        raise BadRequest(f"Invalid input for field 'gateway_ip': {addr} is not in {cidr}.")
    if addr in (cidr.network_address, cidr.broadcast_address):
        raise BadRequest(f"Invalid input for field 'gateway_ip': {addr} is the network or "
                         f"broadcast address of {cidr}.")
    return str(addr)


def _holder(session: Session, sub: Subnet, address: str) -> str | None:
    """The port holding ``address`` of the subnet, if any."""
    return session.scalars(select(IPAllocation.port_id).where(
        IPAllocation.subnet_id == sub.id, IPAllocation.ip_address == address)).first()


def check(session: Session, sub: Subnet, body: dict[str, Any]) -> SubnetChange:
    """The update ``body`` asks of ``sub``, checked (400/409 naming the field), or
    nothing assigned at all."""
    for key in sorted(body):
        if key in READ_ONLY:
            raise BadRequest(f"Cannot update read-only attribute {key}")
    unknown = sorted(set(body) - UPDATABLE - NOT_STORED)
    if unknown:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(unknown)}'")
    for key in sorted(NOT_STORED & set(body)):
        if body[key] not in ([], None):
            raise BadRequest(f"Invalid input for field '{key}': Haven does not support "
                             f"{key} on subnets.")
    cidr = ipaddress.ip_network(sub.cidr)
    assert isinstance(cidr, ipaddress.IPv4Network)
    enable_dhcp = body.get("enable_dhcp")
    if "enable_dhcp" in body and not isinstance(enable_dhcp, bool):
        raise BadRequest(f"Invalid input for field 'enable_dhcp': {enable_dhcp!r} is not "
                         "a boolean.")
    gateway = _gateway(body["gateway_ip"], cidr) if "gateway_ip" in body else sub.gateway_ip
    gateway_changed = gateway != sub.gateway_ip
    pools = (allocation_pools.parse(body["allocation_pools"], cidr)
             if "allocation_pools" in body else None)
    if gateway_changed or pools is not None:
        allocation_pools.check_gateway(
            gateway, ipam.pools_of(sub) if pools is None else pools,
            "allocation_pools" if pools is not None else "gateway_ip")
    if gateway_changed:
        if sub.gateway_ip is not None:
            holder = _holder(session, sub, sub.gateway_ip)
            if holder is not None:
                raise Conflict(f"Invalid input for field 'gateway_ip': current gateway ip "
                               f"{sub.gateway_ip} already in use by port {holder}. "
                               "Unable to update.")
        if gateway is not None:
            holder = _holder(session, sub, gateway)
            if holder is not None:
                raise Conflict(f"Invalid input for field 'gateway_ip': {gateway} is in use "
                               f"by port {holder}.")
    return SubnetChange(
        name=_text(body, "name", 255) if "name" in body else None,
        description=_text(body, "description", 1024) if "description" in body else None,
        enable_dhcp=enable_dhcp, gateway_changed=gateway_changed, gateway_ip=gateway,
        pools=pools)

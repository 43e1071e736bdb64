"""Subnets (``/v2.0/subnets``): IPv4 ranges of a network, with their allocation pools
(:mod:`core.network.allocation_pools`)."""

from __future__ import annotations

import ipaddress
from typing import Any

import bottle
from sqlalchemy import or_, select

from core.common import policy
from core.common.config import ApiConfig
from core.common.faults import BadRequest, Conflict, NotFound
from core.common.timeutil import now
from core.common.wsgi import field, json_body, session
from core.network import agent_nudges, allocation_pools, ipam, subnet_update
from core.network.access import (
    child_target,
    filtered,
    load_network,
    network_of,
    owner_of,
    paged,
    reader,
    writer,
)
from core.network.models import IPAllocation, Network, Subnet
from core.network.views import subnet_view


def create_subnet_row(s: Any, net: Network, name: str, cidr: str, gateway: str | None,
                      project_id: str | None,
                      pools: list[allocation_pools.Pool] | None = None,
                      enable_dhcp: bool = False) -> Subnet:
    """The subnet row with ``pools`` (checked already; None: Neutron's default ones)."""
    network = ipaddress.IPv4Network(cidr)
    ts = now()
    sub = Subnet(name=name, network_id=net.id, project_id=project_id, cidr=cidr,
                 gateway_ip=gateway, enable_dhcp=enable_dhcp, description="", created_at=ts,
                 updated_at=ts)
    ipam.set_pools(sub, allocation_pools.default(network, gateway) if pools is None else pools)
    s.add(sub)
    s.flush()
    return sub


def load_subnet(subnet_id: str) -> tuple[Subnet, dict[str, Any]]:
    s = session().get(Subnet, subnet_id)
    target = child_target(s.project_id, network_of(s.network_id)) if s else {}
    if s is None or not policy.allowed(reader(), "network:get_subnet", target):
        raise NotFound(f"Subnet {subnet_id} could not be found.")
    return s, target


def register(app: bottle.Bottle, api: ApiConfig) -> None:
    @app.get("/v2.0/subnets")
    def list_subnets() -> dict[str, Any]:
        ctx = reader()
        query = select(Subnet).order_by(Subnet.created_at)
        if not ctx.is_admin:
            visible = select(Network.id).where(or_(
                Network.shared.is_(True), Network.external.is_(True),
                Network.project_id == ctx.project_id))
            query = query.where(or_(Subnet.project_id == ctx.project_id,
                                    Subnet.network_id.in_(visible)))
        query = filtered(query, Subnet, ("id", "name", "network_id", "tenant_id", "project_id",
                                         "cidr"))
        rows, links = paged("subnets", query.order_by(Subnet.id), api.max_limit)
        return {"subnets": [subnet_view(s) for s in rows], **links}

    @app.post("/v2.0/subnets")
    def create_subnet() -> dict[str, Any]:
        ctx = writer()
        body = field(json_body(), "subnet", dict)
        net = load_network(field(body, "network_id", str))
        policy.enforce(ctx, "network:create_subnet", child_target(ctx.project_id, net))
        if field(body, "ip_version", int, 4) != 4:
            raise BadRequest("Invalid input for field 'ip_version': only 4 is supported.")
        cidr_text = field(body, "cidr", str)
        try:
            cidr = ipaddress.ip_network(cidr_text, strict=True)
        except ValueError as exc:
            raise BadRequest(f"Invalid input for field 'cidr': {exc}") from None
        if not isinstance(cidr, ipaddress.IPv4Network) or cidr.prefixlen > 30:
            raise BadRequest("Invalid input for field 'cidr': an IPv4 network of /30 or larger.")
        gateway: str | None = field(body, "gateway_ip", str, str(next(cidr.hosts())))
        try:
            if gateway is not None and ipaddress.ip_address(gateway) not in cidr:
                raise ValueError(f"{gateway} not in {cidr}")
        except ValueError as exc:
            raise BadRequest(f"Invalid input for field 'gateway_ip': {exc}.") from None
        if "gateway_ip" in body and body["gateway_ip"] is None:
            gateway = None
        if gateway is not None and ipaddress.ip_address(gateway) in (
                cidr.network_address, cidr.broadcast_address):
            raise BadRequest(f"Invalid input for field 'gateway_ip': {gateway} is the network "
                             f"or broadcast address of {cidr}.")
        for other in session().scalars(select(Subnet).where(Subnet.network_id == net.id)):
            if ipaddress.ip_network(other.cidr).overlaps(cidr):
                raise BadRequest(f"Invalid input for field 'cidr': requested subnet with cidr: "
                                 f"{cidr} for network: {net.id} overlaps with another subnet "
                                 f"({other.id}, {other.cidr}).")
        pools = None  # absent or null: Neutron's default pools; [] none at all
        if body.get("allocation_pools") is not None:
            pools = allocation_pools.parse(body["allocation_pools"], cidr)
            allocation_pools.check_gateway(gateway, pools)
        sub = create_subnet_row(session(), net, field(body, "name", str, ""), str(cidr), gateway,
                                owner_of(ctx, body, "subnet"), pools)
        sub.enable_dhcp = field(body, "enable_dhcp", bool, True)  # Neutron's default
        sub.description = field(body, "description", str, "")
        agent_nudges.after_commit(agent_nudges.network_hosts(session(), net.id))  # DHCP
        bottle.response.status = 201
        return {"subnet": subnet_view(sub)}

    @app.get("/v2.0/subnets/<subnet_id>")
    def show_subnet(subnet_id: str) -> dict[str, Any]:
        return {"subnet": subnet_view(load_subnet(subnet_id)[0])}

    @app.put("/v2.0/subnets/<subnet_id>")
    def update_subnet(subnet_id: str) -> dict[str, Any]:
        ctx = writer()
        sub, target = load_subnet(subnet_id)  # 404 for what the caller cannot see
        policy.enforce(ctx, "network:update_subnet", target)  # 403 for what it only sees
        body = field(json_body(), "subnet", dict)
        change = subnet_update.check(session(), sub, body)
        change.apply(sub)
        sub.updated_at = now()
        sub.revision_number = (sub.revision_number or 0) + 1
        # the hosts on the network serve its DHCP subnets (gateway, pool, on or off)
        agent_nudges.after_commit(agent_nudges.network_hosts(session(), sub.network_id))
        return {"subnet": subnet_view(sub)}

    @app.delete("/v2.0/subnets/<subnet_id>")
    def delete_subnet(subnet_id: str) -> None:
        ctx = writer()
        sub, target = load_subnet(subnet_id)
        if not policy.allowed(ctx, "network:delete_subnet", target):
            if ctx.project_id not in (sub.project_id, target["network_project_id"]):
                raise NotFound(f"Subnet {subnet_id} could not be found.")
            policy.enforce(ctx, "network:delete_subnet", target)
        if session().scalars(select(IPAllocation.port_id).where(
                IPAllocation.subnet_id == sub.id).limit(1)).first():
            raise Conflict(f"Unable to complete operation on subnet {subnet_id}: "
                           "one or more ports have an IP allocation from this subnet.")
        agent_nudges.after_commit(agent_nudges.network_hosts(session(), sub.network_id))
        session().delete(sub)

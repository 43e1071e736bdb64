"""Routers (``/v2.0/routers``): an external gateway and interfaces on tenant subnets.

Neutron's ``router``, ``external-net`` and ``ext-gw-mode`` extensions: the gateway
takes an address of an external network (IPAM, or ``external_fixed_ips`` chosen
by an administrator), ``enable_snat`` (administrators only, default true) says
whether the tenant subnets behind it are masqueraded to that address; an
interface takes its subnet's gateway address (by subnet) or an existing port (by
port). The data plane that carries this out is :mod:`core.network.routerns`.

Refusals are Neutron's: a router with interfaces is not deleted (409), an
interface a floating IP needs is not removed (409), nor a gateway floating IPs
go through (409); overlapping legs and a gateway on a non-external network are
400s. Every check runs before anything is written, and any refusal rolls the
whole request back, so nothing is half-made.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import bottle
from sqlalchemy import delete, select

from core.common import policy
from core.common.auth import AuthContext
from core.common.config import ApiConfig
from core.common.faults import BadRequest, Conflict, NotFound
from core.common.policy import Rule, admin, any_of, member_of_project, reader_of_project
from core.common.quota import Quotas
from core.common.timeutil import iso, now
from core.common.wsgi import field, json_body, session
from core.network import ipam, l3
from core.network import quotas as network_quotas
from core.network.access import filtered, fixed_ips, load_network, owner_of, paged, reader, writer
from core.network.l3_models import GATEWAY, INTERFACE, FloatingIP, Router, RouterPort
from core.network.models import IPAllocation, Network, Port, Subnet
from core.network.policies import scoped_member
from core.network.ports import load_port
from core.network.subnets import load_subnet

ADMIN_OR_MEMBER = any_of(admin, member_of_project)
RULES: dict[str, Rule] = {
    "network:get_router": any_of(admin, reader_of_project),
    "network:create_router": scoped_member,
    "network:create_router:external_gateway_info:enable_snat": admin,
    "network:create_router:external_gateway_info:external_fixed_ips": admin,
    "network:update_router": ADMIN_OR_MEMBER,
    "network:update_router:external_gateway_info:enable_snat": admin,
    "network:update_router:external_gateway_info:external_fixed_ips": admin,
    "network:delete_router": ADMIN_OR_MEMBER,
    "network:add_router_interface": ADMIN_OR_MEMBER,
    "network:remove_router_interface": ADMIN_OR_MEMBER,
    "network:update_network:router:external": admin,
}
# Attributes a client may send that Haven honours only at their neutral value.
NEUTRAL = {"routes": [], "availability_zone_hints": [], "distributed": False}
UPDATABLE = {"name", "description", "admin_state_up", "external_gateway_info"}


def bad(msg: str) -> BadRequest:
    return BadRequest(f"Bad router request: {msg}.")


# ---- views ---------------------------------------------------------------------------
def router_view(r: Router) -> dict[str, Any]:
    gw = l3.gateway_port(session(), r.id)
    info = None if gw is None else {"network_id": gw.network_id, "enable_snat": r.enable_snat,
                                    "external_fixed_ips": fixed_ips(gw.id)}
    return {
        "id": r.id, "name": r.name, "tenant_id": r.project_id or "",
        "project_id": r.project_id or "", "status": "ACTIVE",
        "admin_state_up": r.admin_state_up, "external_gateway_info": info, "routes": [],
        "description": r.description, "availability_zone_hints": [],
        "availability_zones": [], "flavor_id": None, "tags": [],
        "revision_number": r.revision_number, "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
    }


def interface_view(r: Router, port: Port, subnets: list[Subnet]) -> dict[str, Any]:
    return {"id": r.id, "tenant_id": r.project_id or "", "project_id": r.project_id or "",
            "port_id": port.id, "network_id": port.network_id,
            "subnet_id": subnets[-1].id if subnets else None,
            "subnet_ids": [s.id for s in subnets]}


# ---- lookups -------------------------------------------------------------------------
def target(r: Router) -> dict[str, Any]:
    return {"project_id": r.project_id}


def load_router(router_id: str) -> Router:
    r = session().get(Router, router_id)
    if r is None or not policy.allowed(reader(), "network:get_router", target(r)):
        raise NotFound(f"Router {router_id} could not be found.")
    return r


def writable_router(router_id: str, action: str) -> tuple[AuthContext, Router]:
    """The router for ``action``: 404 if the caller cannot see it, 403 if it only may."""
    ctx = writer()
    r = load_router(router_id)
    policy.enforce(ctx, action, target(r))
    l3.lock_router(session(), r.id)
    session().refresh(r)
    return ctx, r


def check_extra(body: Mapping[str, Any], allowed: set[str]) -> None:
    """A field Haven does not honour is a 400, never silently dropped."""
    for key in sorted(body):
        if key in allowed:
            continue
        if key in NEUTRAL and body[key] == NEUTRAL[key]:
            continue
        raise BadRequest(f"Invalid input for field '{key}': not supported by Haven.")


# ---- the gateway ---------------------------------------------------------------------
def requested_external_ips(info: Mapping[str, Any], net: Network, subnets: list[Subnet]
                           ) -> list[tuple[Subnet, str | None]]:
    """``external_fixed_ips`` as (subnet, address or None), each checked (400 naming it)."""
    wanted = ipam.requested_ips(field(info, "external_fixed_ips", list), subnets, net.id,
                                "external_gateway_info.external_fixed_ips")
    for _, address in wanted:
        if address is not None and any(s.gateway_ip == address for s in subnets):
            raise bad(f"External IP {address} is the same as the gateway IP")
    return wanted


def allocate_gateway(port: Port, subnets: list[Subnet],
                     wanted: list[tuple[Subnet, str | None]]) -> None:
    """Hold the gateway's addresses: those asked for, else one of the first subnet with
    room (IPAM's 409 when the external network is full)."""
    s = session()
    if wanted:
        for sub, address in wanted:
            ipam.allocate(s, sub, port.id, address)
        return
    last: Conflict | None = None
    for sub in subnets:
        try:
            ipam.allocate(s, sub, port.id)
            return
        except Conflict as exc:
            last = exc
    assert last is not None
    raise last


def uses_gateway(router_id: str) -> bool:
    return session().scalar(select(FloatingIP.id).where(
        FloatingIP.router_id == router_id).limit(1)) is not None


def drop_gateway(r: Router, gw: Port) -> None:
    if uses_gateway(r.id):
        raise Conflict(f"Gateway cannot be updated for router {r.id}, since a gateway to "
                       f"external network {gw.network_id} is required by one or more "
                       "floating IPs.")
    session().delete(gw)  # its router port and addresses go with it (foreign keys)
    session().flush()


def set_gateway(ctx: AuthContext, r: Router, info: Any, action: str) -> None:
    """Apply ``external_gateway_info`` (None or {} clears the gateway)."""
    s = session()
    current = l3.gateway_port(s, r.id)
    if info is None or info == {}:
        if current is not None:
            drop_gateway(r, current)
        r.enable_snat = True
        return
    if not isinstance(info, dict):
        raise BadRequest("Invalid input for field 'external_gateway_info': an object.")
    unknown = sorted(set(info) - {"network_id", "enable_snat", "external_fixed_ips",
                                  "qos_policy_id"})
    if unknown or info.get("qos_policy_id") is not None:
        key = unknown[0] if unknown else "qos_policy_id"
        raise BadRequest(f"Invalid input for field 'external_gateway_info.{key}': "
                         "not supported by Haven.")
    net = load_network(field(info, "network_id", str))
    if not net.external:
        raise bad(f"Network {net.id} is not an external network")
    for key in ("enable_snat", "external_fixed_ips"):
        if key in info:
            policy.enforce(ctx, f"{action}:external_gateway_info:{key}", target(r))
    enable_snat = field(info, "enable_snat", bool, True)
    subnets = list(s.scalars(select(Subnet).where(Subnet.network_id == net.id)
                             .order_by(Subnet.created_at, Subnet.id)))
    if not subnets:
        raise bad(f"Network {net.id} does not contain any IPv4 subnet")
    wanted = requested_external_ips(info, net, subnets) if "external_fixed_ips" in info else []
    if current is not None and current.network_id != net.id:
        drop_gateway(r, current)
        current = None
    if current is None:
        legs = [sub for p in l3.router_ports(s, r.id, INTERFACE)
                for sub in l3.port_subnets(s, p.id)]
        clash = l3.overlapping(legs, subnets)
        if clash:
            old, new = clash
            raise bad(f"Cidr {new.cidr} of subnet {new.id} overlaps with cidr {old.cidr} "
                      f"of subnet {old.id}")
        port = l3.new_service_port(s, net, None, r.id, GATEWAY)
        s.add(RouterPort(port_id=port.id, router_id=r.id, port_type=GATEWAY))
        allocate_gateway(port, subnets, wanted)
    elif wanted:
        have = {(a["subnet_id"], a["ip_address"]) for a in fixed_ips(current.id)}
        if {(sub.id, addr) for sub, addr in wanted} != have:
            s.execute(delete(IPAllocation).where(IPAllocation.port_id == current.id))
            allocate_gateway(current, subnets, wanted)
    r.enable_snat = enable_snat


# ---- interfaces ----------------------------------------------------------------------
def interface_request(body: Mapping[str, Any], removal: bool) -> tuple[str | None, str | None]:
    port_id = field(body, "port_id", str, None)
    subnet_id = field(body, "subnet_id", str, None)
    if port_id is None and subnet_id is None:
        raise bad("Either subnet_id or port_id must be specified")
    if not removal and port_id is not None and subnet_id is not None:
        raise bad("Cannot specify both subnet-id and port-id")
    unknown = sorted(set(body) - {"port_id", "subnet_id"})
    if unknown:
        raise BadRequest(f"Invalid input for field '{unknown[0]}': not supported.")
    return port_id, subnet_id


def check_new_legs(r: Router, subnets: list[Subnet]) -> None:
    existing = l3.router_subnets(session(), r.id)
    for sub in subnets:
        if any(e.id == sub.id for e in existing):
            raise bad(f"Router already has a port on subnet {sub.id}")
    clash = l3.overlapping(existing, subnets)
    if clash:
        old, new = clash
        raise bad(f"Cidr {new.cidr} of subnet {new.id} overlaps with cidr {old.cidr} of "
                  f"subnet {old.id}")


def add_by_subnet(ctx: AuthContext, r: Router, subnet_id: str) -> tuple[Port, list[Subnet]]:
    s = session()
    sub, _ = load_subnet(subnet_id)
    if not sub.gateway_ip:
        raise bad("Subnet for router interface must have a gateway IP")
    if sub.project_id != ctx.project_id and not ctx.is_admin:
        raise bad(f"Cannot add interface to router because subnet {sub.id} is not owned by "
                  "project making the request")
    check_new_legs(r, [sub])
    net = s.get(Network, sub.network_id)
    assert net is not None  # a foreign key
    port = l3.new_service_port(s, net, r.project_id, r.id, INTERFACE)
    s.add(RouterPort(port_id=port.id, router_id=r.id, port_type=INTERFACE))
    ipam.allocate(s, sub, port.id, sub.gateway_ip)
    return port, [sub]


def add_by_port(ctx: AuthContext, r: Router, port_id: str) -> tuple[Port, list[Subnet]]:
    s = session()
    port, port_target = load_port(port_id)
    policy.enforce(ctx, "network:update_port", port_target)
    if port.device_id or l3.service_use(s, port.id) is not None:
        raise Conflict(f"Unable to complete operation on port {port.id} for network "
                       f"{port.network_id}. Port already has an attached device "
                       f"{port.device_id or '(a router or floating IP)'}.")
    subnets = l3.port_subnets(s, port.id)
    if not subnets:
        raise bad("Router port must have at least one fixed IP")
    if len(subnets) > 1:
        raise bad("Cannot have multiple IPv4 subnets on router port")
    check_new_legs(r, subnets)
    if not ctx.is_admin:
        for ip in fixed_ips(port.id):
            sub = subnets[0]
            if ipam.reserved(sub, ip["ip_address"]) and sub.project_id != ctx.project_id:
                raise bad(f"Cannot add interface to router because specified port {port.id} "
                          f"has an IP address out of the allocation pool of subnet {sub.id}, "
                          "which is not owned by the project making the request")
    port.device_id, port.device_owner, port.updated_at = r.id, INTERFACE, now()
    s.add(RouterPort(port_id=port.id, router_id=r.id, port_type=INTERFACE))
    return port, subnets


def needed_by_floating_ip(r: Router, sub: Subnet) -> None:
    """409 if a floating IP of this router reaches a fixed address on ``sub``."""
    s = session()
    on_subnet = select(IPAllocation.port_id).where(IPAllocation.subnet_id == sub.id)
    cidr = ipaddress.ip_network(sub.cidr)
    for fip in s.scalars(select(FloatingIP).where(FloatingIP.router_id == r.id,
                                                  FloatingIP.fixed_port_id.in_(on_subnet))):
        if fip.fixed_ip_address and ipaddress.ip_address(fip.fixed_ip_address) in cidr:
            raise Conflict(f"Router interface for subnet {sub.id} on router {r.id} cannot be "
                           "deleted, as it is required by one or more floating IPs.")


def remove_interface(r: Router, port_id: str | None, subnet_id: str | None
                     ) -> tuple[Port, list[Subnet]]:
    s = session()
    interfaces = l3.router_ports(s, r.id, INTERFACE)
    if port_id is not None:
        found = [p for p in interfaces if p.id == port_id]
        if not found:
            raise NotFound(f"Router {r.id} does not have an interface with id {port_id}")
        port = found[0]
        subnets = l3.port_subnets(s, port.id)
        if subnet_id is not None and subnet_id not in {sub.id for sub in subnets}:
            raise BadRequest(f"Subnet on port {port_id} does not match the requested subnet "
                             f"{subnet_id}.")
    else:
        found = [p for p in interfaces
                 if subnet_id in {sub.id for sub in l3.port_subnets(s, p.id)}]
        if not found:
            raise NotFound(f"Router {r.id} has no interface on subnet {subnet_id}")
        port = found[0]
        subnets = l3.port_subnets(s, port.id)
    for sub in subnets:
        needed_by_floating_ip(r, sub)
    s.delete(port)  # its router port and addresses go with it (foreign keys)
    return port, subnets


# ---- routes --------------------------------------------------------------------------
def register(app: bottle.Bottle, quotas: Quotas, api: ApiConfig) -> None:
    policy.register(RULES)

    @app.get("/v2.0/routers")
    def list_routers() -> dict[str, Any]:
        ctx = reader()
        query = select(Router).order_by(Router.created_at)
        if not ctx.is_admin:
            query = query.where(Router.project_id == ctx.project_id)
        query = filtered(query, Router, ("id", "name", "tenant_id", "project_id",
                                         "description"))
        rows, links = paged("routers", query.order_by(Router.id), api.max_limit)
        return {"routers": [router_view(r) for r in rows], **links}

    @app.post("/v2.0/routers")
    def create_router() -> dict[str, Any]:
        ctx = writer()
        body = field(json_body(), "router", dict)
        policy.enforce(ctx, "network:create_router")
        check_extra(body, UPDATABLE | {"project_id", "tenant_id"})
        owner = owner_of(ctx, body, "router")
        network_quotas.enforce(quotas, session(), owner, "router")
        ts = now()
        r = Router(name=field(body, "name", str, ""), project_id=owner,
                   admin_state_up=field(body, "admin_state_up", bool, True), enable_snat=True,
                   description=field(body, "description", str, ""), revision_number=0,
                   created_at=ts, updated_at=ts)
        session().add(r)
        session().flush()
        if body.get("external_gateway_info"):
            set_gateway(ctx, r, body["external_gateway_info"], "network:create_router")
        bottle.response.status = 201
        return {"router": router_view(r)}

    @app.get("/v2.0/routers/<router_id>")
    def show_router(router_id: str) -> dict[str, Any]:
        return {"router": router_view(load_router(router_id))}

    @app.put("/v2.0/routers/<router_id>")
    def update_router(router_id: str) -> dict[str, Any]:
        ctx, r = writable_router(router_id, "network:update_router")
        body = field(json_body(), "router", dict)
        check_extra(body, UPDATABLE)
        if "name" in body:
            r.name = field(body, "name", str)
        if "description" in body:
            r.description = field(body, "description", str)
        if "admin_state_up" in body:
            r.admin_state_up = field(body, "admin_state_up", bool)
        if "external_gateway_info" in body:
            set_gateway(ctx, r, body["external_gateway_info"], "network:update_router")
        r.updated_at = now()
        return {"router": router_view(r)}

    @app.delete("/v2.0/routers/<router_id>")
    def delete_router(router_id: str) -> None:
        _, r = writable_router(router_id, "network:delete_router")
        s = session()
        attached = [p.id for p in l3.router_ports(s, r.id, INTERFACE)]
        if attached:
            raise Conflict(f"Router {r.id} has ports still attached: {', '.join(attached)}")
        gw = l3.gateway_port(s, r.id)
        if gw is not None:
            drop_gateway(r, gw)
        s.execute(delete(RouterPort).where(RouterPort.router_id == r.id))
        s.delete(r)

    @app.put("/v2.0/routers/<router_id>/add_router_interface")
    def add_router_interface(router_id: str) -> dict[str, Any]:
        ctx, r = writable_router(router_id, "network:add_router_interface")
        port_id, subnet_id = interface_request(json_body(), removal=False)
        if port_id is not None:
            port, subnets = add_by_port(ctx, r, port_id)
        else:
            assert subnet_id is not None
            port, subnets = add_by_subnet(ctx, r, subnet_id)
        session().flush()
        return interface_view(r, port, subnets)

    @app.put("/v2.0/routers/<router_id>/remove_router_interface")
    def remove_router_interface(router_id: str) -> dict[str, Any]:
        _, r = writable_router(router_id, "network:remove_router_interface")
        port_id, subnet_id = interface_request(json_body(), removal=True)
        port, subnets = remove_interface(r, port_id, subnet_id)
        return interface_view(r, port, subnets)


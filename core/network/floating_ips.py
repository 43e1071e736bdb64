"""Floating IPs (``/v2.0/floatingips``): an external address mapped 1:1 to a fixed one.

As Neutron: the address comes from an external network only (else 400), held by
a port of the floating IP's own; associating it with a port needs a router that
has its gateway on the floating IP's network and an interface on the port's
subnet (else 404, ExternalGatewayForFloatingIPNotFound). The port must be the
floating IP's project's (400), an ordinary port (not a router's or another
floating IP's, 400), and its fixed address chosen when it has several (400); one
fixed address has at most one floating IP per external network (409).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import bottle
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

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
from core.network.access import filtered, load_network, owner_of, paged, reader, writer
from core.network.l3_models import FLOATING, GATEWAY, INTERFACE, FloatingIP, RouterPort
from core.network.models import IPAllocation, Port, Subnet, new_uuid
from core.network.policies import privileged_device_owner, scoped_member
from core.network.ports import load_port

RULES: dict[str, Rule] = {
    "network:get_floatingip": any_of(admin, reader_of_project),
    "network:create_floatingip": scoped_member,
    "network:create_floatingip:floating_ip_address": admin,
    "network:update_floatingip": any_of(admin, member_of_project),
    "network:delete_floatingip": any_of(admin, member_of_project),
}
CREATE_FIELDS = {"floating_network_id", "port_id", "fixed_ip_address", "floating_ip_address",
                 "subnet_id", "description", "project_id", "tenant_id", "qos_policy_id"}
UPDATE_FIELDS = {"port_id", "fixed_ip_address", "description", "qos_policy_id"}


def bad(msg: str) -> BadRequest:
    return BadRequest(f"Bad floatingip request: {msg}.")


def fip_view(f: FloatingIP) -> dict[str, Any]:
    return {
        "id": f.id, "tenant_id": f.project_id or "", "project_id": f.project_id or "",
        "floating_ip_address": f.floating_ip_address,
        "floating_network_id": f.floating_network_id, "router_id": f.router_id,
        "port_id": f.fixed_port_id, "fixed_ip_address": f.fixed_ip_address,
        "status": "ACTIVE" if f.fixed_port_id else "DOWN", "description": f.description,
        "port_forwardings": [], "qos_policy_id": None, "tags": [], "revision_number": 0,
        "created_at": iso(f.created_at), "updated_at": iso(f.updated_at),
    }


def load_fip(fip_id: str) -> FloatingIP:
    f = session().get(FloatingIP, fip_id)
    if f is None or not policy.allowed(reader(), "network:get_floatingip",
                                       {"project_id": f.project_id}):
        raise NotFound(f"Floating IP {fip_id} could not be found.")
    return f


def check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    for key in sorted(body):
        if key not in allowed or (key == "qos_policy_id" and body[key] is not None):
            raise BadRequest(f"Invalid input for field '{key}': not supported by Haven.")


def internal_address(ctx: AuthContext, f: FloatingIP, port: Port, wanted: str | None
                     ) -> tuple[str, Subnet]:
    """The fixed address of ``port`` the floating IP maps to, and its subnet (Neutron's
    ``_internal_fip_assoc_data``)."""
    if port.project_id != f.project_id and not ctx.is_admin:
        raise bad(f"Cannot process floating IP association with Port {port.id}, since that "
                  "port is owned by a different project")
    if privileged_device_owner(port.device_owner) or l3.service_use(session(), port.id):
        raise bad(f"Port {port.id} is unable to be assigned a floating IP")
    rows = session().execute(select(IPAllocation.ip_address, IPAllocation.subnet_id).where(
        IPAllocation.port_id == port.id).order_by(IPAllocation.ip_address)).all()
    if wanted is not None:
        try:
            addr = ipaddress.ip_address(wanted)
        except ValueError:
            raise BadRequest(f"Invalid input for field 'fixed_ip_address': {wanted!r} is "
                             "not an IP address.") from None
        matches = [(ip, sid) for ip, sid in rows if ip == str(addr)]
        if not matches:
            raise bad(f"Port {port.id} does not have fixed ip {addr}")
        ip, subnet_id = matches[0]
    else:
        if not rows:
            raise bad(f"Cannot add floating IP to port {port.id} that has no fixed IPv4 "
                      "addresses")
        if len(rows) > 1:
            raise bad(f"Port {port.id} has multiple fixed IPv4 addresses.  Must provide a "
                      "specific IPv4 address when assigning a floating IP")
        ip, subnet_id = rows[0]
    sub = session().get(Subnet, subnet_id)
    assert sub is not None  # a foreign key
    return ip, sub


def router_for(port: Port, sub: Subnet, external_network_id: str) -> str:
    """A router with an interface on ``sub`` and its gateway on the external network;
    the one whose interface is the subnet's gateway first (Neutron's choice)."""
    s = session()
    gw_port = select(RouterPort.router_id).join(Port, Port.id == RouterPort.port_id).where(
        RouterPort.port_type == GATEWAY, Port.network_id == external_network_id)
    rows = s.execute(
        select(RouterPort.router_id, IPAllocation.ip_address)
        .join(Port, Port.id == RouterPort.port_id)
        .join(IPAllocation, IPAllocation.port_id == Port.id)
        .where(RouterPort.port_type == INTERFACE, Port.network_id == port.network_id,
               IPAllocation.subnet_id == sub.id, RouterPort.router_id.in_(gw_port))
        .order_by(RouterPort.router_id)).all()
    for router_id, ip in rows:
        if ip == sub.gateway_ip:
            return str(router_id)
    if rows:
        return str(rows[0][0])
    raise NotFound(f"External network {external_network_id} is not reachable from subnet "
                   f"{sub.id}.  Therefore, cannot associate Port {port.id} with a Floating IP.")


def associate(ctx: AuthContext, f: FloatingIP, port_id: str | None, wanted: str | None
              ) -> None:
    """Point ``f`` at ``port_id``'s fixed address (None: disassociate)."""
    if port_id is None:
        if wanted is not None:
            raise bad("fixed_ip_address cannot be specified without a port_id")
        f.fixed_port_id = f.fixed_ip_address = f.router_id = None
        return
    port, _ = load_port(port_id)
    ip, sub = internal_address(ctx, f, port, wanted)
    router_id = router_for(port, sub, f.floating_network_id)
    l3.lock_router(session(), router_id)
    router_id = router_for(port, sub, f.floating_network_id)  # again, under the lock
    taken = session().scalar(select(FloatingIP.id).where(
        FloatingIP.floating_network_id == f.floating_network_id,
        FloatingIP.fixed_port_id == port.id, FloatingIP.fixed_ip_address == ip,
        FloatingIP.id != f.id))
    if taken:
        raise Conflict(f"Cannot associate floating IP {f.floating_ip_address} ({f.id}) with "
                       f"port {port.id} using fixed IP {ip}, as that fixed IP already has a "
                       f"floating IP on external network {f.floating_network_id}.")
    f.fixed_port_id, f.fixed_ip_address, f.router_id = port.id, ip, router_id
    try:
        session().flush()
    except IntegrityError:  # a concurrent association of the same fixed address won
        raise Conflict(f"Fixed IP {ip} of port {port.id} already has a floating IP on "
                       f"external network {f.floating_network_id}.") from None


def allocate_floating(f: FloatingIP, port: Port, body: dict[str, Any], subnets: list[Subnet]
                      ) -> str:
    s = session()
    subnet_id = field(body, "subnet_id", str, None)
    wanted = field(body, "floating_ip_address", str, None)
    candidates = [sub for sub in subnets if subnet_id in (None, sub.id)]
    if not candidates:
        raise BadRequest(f"Invalid input for field 'subnet_id': no subnet {subnet_id} on "
                         f"network {f.floating_network_id}.")
    if wanted is not None:
        try:
            addr = ipaddress.ip_address(wanted)
        except ValueError:
            raise BadRequest(f"Invalid input for field 'floating_ip_address': {wanted!r} is "
                             "not an IP address.") from None
        inside = [sub for sub in candidates if addr in ipaddress.ip_network(sub.cidr)]
        if not inside:
            raise BadRequest(f"Invalid input for field 'floating_ip_address': {addr} is in "
                             f"no subnet of network {f.floating_network_id}.")
        return ipam.allocate(s, inside[0], port.id, str(addr))
    last: Conflict | None = None
    for sub in candidates:
        try:
            return ipam.allocate(s, sub, port.id)
        except Conflict as exc:
            last = exc
    assert last is not None
    raise last


def register(app: bottle.Bottle, quotas: Quotas, api: ApiConfig) -> None:
    policy.register(RULES)

    @app.get("/v2.0/floatingips")
    def list_fips() -> dict[str, Any]:
        ctx = reader()
        query = select(FloatingIP).order_by(FloatingIP.created_at)
        if not ctx.is_admin:
            query = query.where(FloatingIP.project_id == ctx.project_id)
        q = bottle.request.query
        if "port_id" in q:
            query = query.where(FloatingIP.fixed_port_id.in_(q.getall("port_id")))
        query = filtered(query, FloatingIP, (
            "id", "tenant_id", "project_id", "floating_ip_address", "floating_network_id",
            "router_id", "fixed_ip_address", "description"))
        rows, links = paged("floatingips", query.order_by(FloatingIP.id), api.max_limit)
        return {"floatingips": [fip_view(f) for f in rows], **links}

    @app.post("/v2.0/floatingips")
    def create_fip() -> dict[str, Any]:
        ctx = writer()
        body = field(json_body(), "floatingip", dict)
        policy.enforce(ctx, "network:create_floatingip")
        check_fields(body, CREATE_FIELDS)
        if "floating_ip_address" in body:
            policy.enforce(ctx, "network:create_floatingip:floating_ip_address")
        net = load_network(field(body, "floating_network_id", str))
        if not net.external:
            raise bad(f"Network {net.id} is not a valid external network "
                      "(floating_network_id)")
        subnets = list(session().scalars(select(Subnet).where(Subnet.network_id == net.id)
                                         .order_by(Subnet.created_at, Subnet.id)))
        if not subnets:
            raise bad(f"Network {net.id} does not contain any IPv4 subnet")
        owner = owner_of(ctx, body, "floating IP")
        network_quotas.enforce(quotas, session(), owner, "floatingip")
        ts = now()
        f = FloatingIP(project_id=owner, floating_network_id=net.id, floating_ip_address="",
                       description=field(body, "description", str, ""), created_at=ts,
                       updated_at=ts)
        f.id = new_uuid()
        port = l3.new_service_port(session(), net, None, f.id, FLOATING)
        f.floating_port_id = port.id
        f.floating_ip_address = allocate_floating(f, port, body, subnets)
        session().add(f)
        session().flush()
        if body.get("port_id") is not None or body.get("fixed_ip_address") is not None:
            associate(ctx, f, field(body, "port_id", str, None),
                      field(body, "fixed_ip_address", str, None))
        bottle.response.status = 201
        return {"floatingip": fip_view(f)}

    @app.get("/v2.0/floatingips/<fip_id>")
    def show_fip(fip_id: str) -> dict[str, Any]:
        return {"floatingip": fip_view(load_fip(fip_id))}

    @app.put("/v2.0/floatingips/<fip_id>")
    def update_fip(fip_id: str) -> dict[str, Any]:
        ctx = writer()
        f = load_fip(fip_id)
        policy.enforce(ctx, "network:update_floatingip", {"project_id": f.project_id})
        body = field(json_body(), "floatingip", dict)
        check_fields(body, UPDATE_FIELDS)
        if "description" in body:
            f.description = field(body, "description", str)
        if "port_id" in body:
            associate(ctx, f, field(body, "port_id", str, None),
                      field(body, "fixed_ip_address", str, None))
        elif "fixed_ip_address" in body:
            if f.fixed_port_id is None:
                raise bad("fixed_ip_address cannot be specified without a port_id")
            associate(ctx, f, f.fixed_port_id, field(body, "fixed_ip_address", str, None))
        f.updated_at = now()
        return {"floatingip": fip_view(f)}

    @app.delete("/v2.0/floatingips/<fip_id>")
    def delete_fip(fip_id: str) -> None:
        ctx = writer()
        f = load_fip(fip_id)
        policy.enforce(ctx, "network:delete_floatingip", {"project_id": f.project_id})
        port = session().get(Port, f.floating_port_id)
        session().delete(f)
        session().flush()
        if port is not None:
            session().delete(port)

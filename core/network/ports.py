"""Ports (``/v2.0/ports``): a device's MAC and fixed IPs (from IPAM) on a network."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import bottle
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from core.common import policy
from core.common.config import ApiConfig
from core.common.faults import BadRequest, Conflict, NotFound
from core.common.quota import Quotas
from core.common.timeutil import now
from core.common.wsgi import auth, field, json_body, session
from core.network import agent_nudges, binding, ipam, l3, port_security
from core.network import quotas as network_quotas
from core.network.access import (
    child_target,
    filtered,
    fixed_ips,
    load_network,
    network_of,
    owner_of,
    paged,
    reader,
    writer,
)
from core.network.models import IPAllocation, Port, Subnet
from core.network.policies import privileged_device_owner
from core.network.views import port_view


def _mac() -> str:
    return "fa:16:3e:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))


def load_port(port_id: str) -> tuple[Port, dict[str, Any]]:
    p = session().get(Port, port_id)
    target = child_target(p.project_id, network_of(p.network_id)) if p else {}
    if p is None or not policy.allowed(reader(), "network:get_port", target):
        raise NotFound(f"Port {port_id} could not be found.")
    return p, target


def port_attribute_rules(body: dict[str, Any], action: str) -> list[str]:
    """The extra rules the attributes in ``body`` call for (Neutron's per-attribute rules)."""
    rules = []
    if privileged_device_owner(field(body, "device_owner", str, "")):
        rules.append(f"{action}:device_owner")
    if "binding:host_id" in body:
        rules.append(f"{action}:binding:host_id")
    if action == "network:create_port" and "mac_address" in body:
        rules.append(f"{action}:mac_address")
    return rules


def shown(p: Port) -> dict[str, Any]:
    """The port as Neutron shows it to the caller: its security groups and port
    security, and its binding attributes for admins only."""
    return binding.present(
        {**port_view(p, fixed_ips(p.id)), **port_security.attributes(session(), p.id)},
        policy.allowed(auth(), "network:get_port:binding"))


def rebind(p: Port, host: str) -> None:
    """A port bound to another host is DOWN until that host's network agent has plugged
    and filtered it (compute waits for ACTIVE: an old host's ACTIVE must not count)."""
    if host != p.host_id:
        p.status = "DOWN"
    p.host_id = host


def writable_port(port_id: str, action: str) -> tuple[Port, dict[str, Any]]:
    ctx = writer()
    p, target = load_port(port_id)
    policy.enforce(ctx, action, target)  # visible (a reader of its project): 403
    return p, target


def register(app: bottle.Bottle, quotas: Quotas, api: ApiConfig) -> None:
    @app.get("/v2.0/ports")
    def list_ports() -> dict[str, Any]:
        ctx = reader()
        query = select(Port).order_by(Port.created_at)
        if not ctx.is_admin:
            query = query.where(Port.project_id == ctx.project_id)
        query = filtered(query, Port, ("id", "name", "network_id", "device_id", "device_owner",
                                       "tenant_id", "project_id", "mac_address"))
        if binding.HOST_FILTER in bottle.request.query:
            policy.enforce(ctx, "network:get_port:binding")
            query = query.where(Port.host_id.in_(bottle.request.query.getall(
                binding.HOST_FILTER)))
        rows, links = paged("ports", query.order_by(Port.id), api.max_limit)
        return {"ports": [shown(p) for p in rows], **links}

    @app.post("/v2.0/ports")
    def create_port() -> dict[str, Any]:
        ctx = writer()
        body = field(json_body(), "port", dict)
        net = load_network(field(body, "network_id", str))
        target = child_target(owner_of(ctx, body, "port"), net)
        policy.enforce(ctx, "network:create_port", target)
        for rule in port_attribute_rules(body, "network:create_port"):
            policy.enforce(ctx, rule, target)
        subnets = list(session().scalars(select(Subnet).where(Subnet.network_id == net.id)))
        requested = field(body, "fixed_ips", list, None)
        wanted = ipam.requested_ips(requested, subnets, net.id)
        for sub, address in wanted:
            if address is not None:
                policy.enforce(ctx, "network:create_port:fixed_ips:ip_address", target)
                if ipam.reserved(sub, address):
                    policy.enforce(ctx, "network:create_port:fixed_ips:reserved", target)
        ts = now()
        network_quotas.enforce(quotas, session(), target["project_id"], "port")
        port = Port(name=field(body, "name", str, ""), network_id=net.id,
                    project_id=target["project_id"],
                    mac_address=field(body, "mac_address", str, _mac()),
                    device_id=field(body, "device_id", str, ""),
                    device_owner=field(body, "device_owner", str, ""),
                    host_id=field(body, "binding:host_id", str, ""), status="DOWN",
                    admin_state_up=field(body, "admin_state_up", bool, True),
                    description=field(body, "description", str, ""), created_at=ts,
                    updated_at=ts)
        session().add(port)
        try:
            session().flush()
        except IntegrityError:
            raise Conflict(f"MAC address {port.mac_address} is in use on network "
                           f"{net.id}.") from None
        if requested is None:
            for sub in subnets[:1]:
                ipam.allocate(session(), sub, port.id)
        for sub, address in wanted:
            ipam.allocate(session(), sub, port.id, address)
        port_security.on_create(session(), ctx, body, port, target, bool(fixed_ips(port.id)))
        agent_nudges.after_commit(agent_nudges.port_hosts(session(), port))
        bottle.response.status = 201
        return {"port": shown(port)}

    @app.get("/v2.0/ports/<port_id>")
    def show_port(port_id: str) -> dict[str, Any]:
        p, _ = load_port(port_id)
        return {"port": shown(p)}

    @app.put("/v2.0/ports/<port_id>")
    def update_port(port_id: str) -> dict[str, Any]:
        p, target = writable_port(port_id, "network:update_port")
        was_on = agent_nudges.port_hosts(session(), p)  # a rebound port's old host too
        body = field(json_body(), "port", dict)
        for rule in port_attribute_rules(body, "network:update_port"):
            policy.enforce(auth(), rule, target)
        if "status" in body:
            policy.enforce(auth(), "network:update_port:status", target)
        setters: dict[str, Callable[[Any], None]] = {
            "name": lambda v: setattr(p, "name", v),
            "description": lambda v: setattr(p, "description", v),
            "device_id": lambda v: setattr(p, "device_id", v),
            "device_owner": lambda v: setattr(p, "device_owner", v),
            "binding:host_id": lambda v: rebind(p, v),
            "status": lambda v: setattr(p, "status", v),
        }
        port_security.on_update(session(), auth(), body, p, target, bool(fixed_ips(p.id)))
        for key in body:
            if key in port_security.KEYS:
                continue
            if key == "admin_state_up":
                p.admin_state_up = field(body, key, bool)
            elif key in setters:
                setters[key](field(body, key, str))
            else:
                raise BadRequest(f"Invalid input for field '{key}': cannot be updated.")
        p.updated_at = now()
        agent_nudges.after_commit(was_on | agent_nudges.port_hosts(session(), p))
        return {"port": shown(p)}

    @app.delete("/v2.0/ports/<port_id>")
    def delete_port(port_id: str) -> None:
        p, _ = writable_port(port_id, "network:delete_port")
        agent_nudges.after_commit(agent_nudges.port_hosts(session(), p))
        l3.before_port_delete(session(), p)
        session().execute(delete(IPAllocation).where(IPAllocation.port_id == p.id))
        session().delete(p)

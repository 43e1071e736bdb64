"""The network API (Neutron v2.0 subset: networks, subnets, ports) and its app factory.

Visibility and rights follow Neutron's default policies (core/network/policies.py):
a project's readers see its resources and the shared and external networks, its
members change them, an admin sees and changes everything. Resources the caller
cannot see answer 404; ones it sees but may not change, 403; an unscoped token
gets 403 for every call. Ports carry their fixed IPs from IPAM, so every server
shows an address in ``addresses``.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from typing import Any

import bottle
from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError

from core.common import policy
from core.common.auth import AuthContext, TokenValidator
from core.common.config import HavenConfig
from core.common.db import Database
from core.common.faults import BadRequest, Conflict, Forbidden, NotFound
from core.common.health import add_healthcheck
from core.common.paging import next_links, paginate
from core.common.timeutil import iso, now
from core.common.tokens import KeyRepository, TokenCodec
from core.common.wsgi import auth, base_url, field, json_body, make_app, session
from core.network import ipam
from core.network import quotas as network_quotas
from core.network.models import IPAllocation, Network, Port, Subnet
from core.network.policies import RULES, privileged_device_owner


def network_view(n: Network, subnets: list[str]) -> dict[str, Any]:
    return {
        "id": n.id, "name": n.name, "tenant_id": n.project_id or "",
        "project_id": n.project_id or "", "status": "ACTIVE",
        "admin_state_up": n.admin_state_up, "shared": n.shared, "router:external": n.external,
        "subnets": subnets, "mtu": n.mtu, "provider:network_type": n.network_type,
        "provider:physical_network": n.physical_network, "provider:segmentation_id": None,
        "availability_zones": [], "availability_zone_hints": [], "description": n.description,
        "port_security_enabled": False, "ipv4_address_scope": None, "ipv6_address_scope": None,
        "is_default": False, "tags": [], "revision_number": 0,
        "created_at": iso(n.created_at), "updated_at": iso(n.updated_at),
    }


def subnet_view(s: Subnet) -> dict[str, Any]:
    return {
        "id": s.id, "name": s.name, "network_id": s.network_id,
        "tenant_id": s.project_id or "", "project_id": s.project_id or "", "ip_version": 4,
        "cidr": s.cidr, "gateway_ip": s.gateway_ip,
        "allocation_pools": [{"start": s.pool_start, "end": s.pool_end}],
        "enable_dhcp": s.enable_dhcp, "dns_nameservers": [], "host_routes": [],
        "description": s.description, "subnetpool_id": None, "ipv6_ra_mode": None,
        "ipv6_address_mode": None, "service_types": [], "tags": [], "revision_number": 0,
        "created_at": iso(s.created_at), "updated_at": iso(s.updated_at),
    }


def port_view(p: Port, fixed_ips: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "id": p.id, "name": p.name, "network_id": p.network_id,
        "tenant_id": p.project_id or "", "project_id": p.project_id or "",
        "mac_address": p.mac_address, "fixed_ips": fixed_ips, "device_id": p.device_id,
        "device_owner": p.device_owner, "status": p.status, "admin_state_up": p.admin_state_up,
        "binding:host_id": p.host_id, "binding:vif_type": "tap" if p.host_id else "unbound",
        "binding:vnic_type": "normal", "binding:profile": {}, "binding:vif_details": {},
        "security_groups": [], "allowed_address_pairs": [], "extra_dhcp_opts": [],
        "port_security_enabled": False, "description": p.description, "tags": [],
        "revision_number": 0, "created_at": iso(p.created_at), "updated_at": iso(p.updated_at),
    }


def _owner(ctx: AuthContext, body: dict[str, Any], kind: str) -> str | None:
    requested = body.get("project_id", body.get("tenant_id"))
    if requested is not None and requested != ctx.project_id:
        if not ctx.is_admin:
            raise Forbidden(f"Only an administrator may create a {kind} for another project.")
        return str(requested)
    return ctx.project_id


def network_target(n: Network) -> dict[str, Any]:
    return {"project_id": n.project_id, "shared": n.shared, "external": n.external}


def child_target(project_id: str | None, n: Network) -> dict[str, Any]:
    """What subnet and port rules see: the resource's project and its network's."""
    return {**network_target(n), "project_id": project_id, "network_project_id": n.project_id}


def writer() -> AuthContext:
    """The caller of a write: a token scoped to a project, or 403.

    An unscoped token has no roles and no project; refusing it here, before any
    lookup, makes every write a 403 for it (Neutron refuses it by scope).
    """
    ctx = auth()
    if ctx.project_id is None:
        raise Forbidden("A token scoped to a project is required to change network resources.")
    return ctx


def _mac() -> str:
    return "fa:16:3e:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))


def create_network_row(s: Any, name: str, project_id: str | None, shared: bool,
                       external: bool = False, physical: str | None = "provider") -> Network:
    ts = now()
    net = Network(name=name, project_id=project_id, shared=shared, external=external,
                  admin_state_up=True, network_type="flat", physical_network=physical,
                  mtu=1500, description="", created_at=ts, updated_at=ts)
    s.add(net)
    s.flush()
    return net


def create_subnet_row(s: Any, net: Network, name: str, cidr: str, gateway: str | None,
                      project_id: str | None) -> Subnet:
    start, end = ipam.default_pool(cidr, gateway)
    ts = now()
    sub = Subnet(name=name, network_id=net.id, project_id=project_id, cidr=cidr,
                 gateway_ip=gateway, pool_start=start, pool_end=end, enable_dhcp=False,
                 description="", created_at=ts, updated_at=ts)
    s.add(sub)
    s.flush()
    return sub


def requested_ips(requested: list[Any] | None, subnets: list[Subnet], network_id: str
                  ) -> list[tuple[Subnet, str | None]]:
    """The port's ``fixed_ips`` request as (subnet, address or None), checked: 400 naming
    the entry that names no subnet of the network or is not an address."""
    out: list[tuple[Subnet, str | None]] = []
    for i, ip in enumerate(requested or []):
        if not isinstance(ip, dict):
            raise BadRequest(f"Invalid input for field 'fixed_ips[{i}]': an object.")
        unknown = sorted(set(ip) - {"subnet_id", "ip_address"})
        if unknown:
            raise BadRequest(f"Invalid input for field 'fixed_ips[{i}].{unknown[0]}': "
                             "not supported.")
        sub_id = ip.get("subnet_id")
        candidates = [s for s in subnets if sub_id in (None, s.id)]
        if not candidates:
            raise BadRequest(f"Invalid input for field 'fixed_ips[{i}].subnet_id': "
                             f"no subnet {sub_id} on network {network_id}.")
        address = ip.get("ip_address")
        if address is None:
            out.append((candidates[0], None))
            continue
        try:
            wanted = ipaddress.ip_address(str(address))
        except ValueError:
            raise BadRequest(f"Invalid input for field 'fixed_ips[{i}].ip_address'"
                             f": {address!r} is not an IP address.") from None
        inside = [s for s in candidates if wanted in ipaddress.ip_network(s.cidr)]
        if not inside:
            raise BadRequest(f"Invalid input for field 'fixed_ips[{i}].ip_address': "
                             f"{wanted} is in no subnet of network {network_id}.")
        out.append((inside[0], str(wanted)))
    return out


def create_app(cfg: HavenConfig, db: Database) -> bottle.Bottle:
    validator = TokenValidator(TokenCodec(KeyRepository(cfg.fernet_key_dir,
                                                        cfg.identity.max_active_keys)))
    app = make_app(db, validator, style="neutron")
    add_healthcheck(app, "network", {"database": db.ping, "bus": None})
    quotas = network_quotas.make_quotas(cfg.quota)
    network_quotas.register(app, quotas)

    policy.register(RULES)

    def reader() -> AuthContext:
        """The caller of a read: scoped to a project (else it would see project-less rows)."""
        ctx = auth()
        if ctx.project_id is None or "reader" not in ctx.roles:
            raise Forbidden("A token scoped to a project is required to read network resources.")
        return ctx

    def load_network(network_id: str) -> Network:
        n = session().get(Network, network_id)
        if n is None or not policy.allowed(reader(), "network:get_network", network_target(n)):
            raise NotFound(f"Network {network_id} could not be found.")
        return n

    def network_of(network_id: str) -> Network:
        n = session().get(Network, network_id)
        if n is None:  # a foreign key: only a concurrent delete gets here
            raise NotFound(f"Network {network_id} could not be found.")
        return n

    def load_subnet(subnet_id: str) -> tuple[Subnet, dict[str, Any]]:
        s = session().get(Subnet, subnet_id)
        target = child_target(s.project_id, network_of(s.network_id)) if s else {}
        if s is None or not policy.allowed(reader(), "network:get_subnet", target):
            raise NotFound(f"Subnet {subnet_id} could not be found.")
        return s, target

    def load_port(port_id: str) -> tuple[Port, dict[str, Any]]:
        p = session().get(Port, port_id)
        target = child_target(p.project_id, network_of(p.network_id)) if p else {}
        if p is None or not policy.allowed(reader(), "network:get_port", target):
            raise NotFound(f"Port {port_id} could not be found.")
        return p, target

    def subnet_ids(network_id: str) -> list[str]:
        return list(session().scalars(select(Subnet.id).where(Subnet.network_id == network_id)))

    def fixed_ips(port_id: str) -> list[dict[str, str]]:
        rows = session().execute(select(IPAllocation.subnet_id, IPAllocation.ip_address).where(
            IPAllocation.port_id == port_id)).all()
        return [{"subnet_id": sid, "ip_address": ip} for sid, ip in rows]

    def filtered(query: Any, model: type, keys: tuple[str, ...]) -> Any:
        q = bottle.request.query
        for key in keys:
            if key in q:
                column = "project_id" if key == "tenant_id" else key
                values = q.getall(key)
                query = query.where(getattr(model, column).in_(values))
        return query

    def register_version_routes() -> None:
        @app.get("/", skip_auth=True)
        def versions() -> dict[str, Any]:
            return {"versions": [{"id": "v2.0", "status": "CURRENT",
                                  "links": [{"rel": "self", "href": f"{base_url()}/v2.0/"}]}]}

        @app.get("/v2.0")
        @app.get("/v2.0/")
        def resources() -> dict[str, Any]:
            return {"resources": [{"name": n, "collection": f"{n}s", "links": []}
                                  for n in ("network", "subnet", "port")]}

        @app.get("/v2.0/extensions")
        def extensions() -> dict[str, Any]:
            return {"extensions": []}

    register_version_routes()

    def paged(collection: str, query: Any) -> tuple[list[Any], dict[str, Any]]:
        """A page of ``query``'s rows and its ``<collection>_links`` (Neutron's pagination)."""
        q = bottle.request.query
        rows = list(session().scalars(query))
        page, limit = paginate(rows, [r.id for r in rows], q, cfg.api.max_limit)
        links = next_links(f"{base_url()}/v2.0/{collection}", {k: q[k] for k in q}, limit,
                           len(page), page[-1].id if page else None)
        return page, ({f"{collection}_links": links} if links else {})

    @app.get("/v2.0/networks")
    def list_networks() -> dict[str, Any]:
        ctx = reader()
        query = select(Network).order_by(Network.created_at)
        if not ctx.is_admin:
            query = query.where(or_(Network.shared.is_(True), Network.external.is_(True),
                                    Network.project_id == ctx.project_id))
        query = filtered(query, Network, ("id", "name", "tenant_id", "project_id"))
        q = bottle.request.query
        if "shared" in q:
            query = query.where(Network.shared.is_(q["shared"].lower() == "true"))
        if "router:external" in q:
            query = query.where(Network.external.is_(q["router:external"].lower() == "true"))
        rows, links = paged("networks", query.order_by(Network.id))
        return {"networks": [network_view(n, subnet_ids(n.id)) for n in rows], **links}

    @app.post("/v2.0/networks")
    def create_network() -> dict[str, Any]:
        ctx = writer()
        body = field(json_body(), "network", dict)
        policy.enforce(ctx, "network:create_network")
        shared = field(body, "shared", bool, False)
        external = field(body, "router:external", bool, False)
        if shared:
            policy.enforce(ctx, "network:create_network:shared")
        if external:
            policy.enforce(ctx, "network:create_network:router:external")
        provider = [k for k in body if k.startswith("provider:")]
        if provider:
            policy.enforce(ctx, "network:create_network:provider")
        if field(body, "provider:network_type", str, "flat") != "flat":
            raise BadRequest("Invalid input for field 'provider:network_type': "
                             "Haven has flat networks only.")
        if body.get("provider:segmentation_id") is not None:
            raise BadRequest("Invalid input for field 'provider:segmentation_id': "
                             "flat networks have none.")
        owner = _owner(ctx, body, "network")
        network_quotas.enforce(quotas, session(), owner, "network")
        net = create_network_row(session(), field(body, "name", str, ""),
                                 owner, shared, external,
                                 field(body, "provider:physical_network", str, None))
        net.description = field(body, "description", str, "")
        net.admin_state_up = field(body, "admin_state_up", bool, True)
        bottle.response.status = 201
        return {"network": network_view(net, [])}

    @app.get("/v2.0/networks/<network_id>")
    def show_network(network_id: str) -> dict[str, Any]:
        n = load_network(network_id)
        return {"network": network_view(n, subnet_ids(n.id))}

    def writable_network(network_id: str, action: str) -> Network:
        """The network for ``action``: 404 if the caller cannot see it, 403 if only see it."""
        ctx = writer()
        n = load_network(network_id)
        target = network_target(n)
        if not policy.allowed(ctx, action, target):
            if n.project_id != ctx.project_id and not (n.shared or n.external):
                raise NotFound(f"Network {network_id} could not be found.")
            policy.enforce(ctx, action, target)
        return n

    @app.put("/v2.0/networks/<network_id>")
    def update_network(network_id: str) -> dict[str, Any]:
        n = writable_network(network_id, "network:update_network")
        body = field(json_body(), "network", dict)
        if "name" in body:
            n.name = field(body, "name", str)
        if "description" in body:
            n.description = field(body, "description", str)
        if "admin_state_up" in body:
            n.admin_state_up = field(body, "admin_state_up", bool)
        if "shared" in body:
            policy.enforce(auth(), "network:update_network:shared", network_target(n))
            n.shared = field(body, "shared", bool)
        unknown = sorted(set(body) - {"name", "description", "admin_state_up", "shared"})
        if unknown:
            raise BadRequest(f"Invalid input for field '{unknown[0]}': cannot be updated.")
        n.updated_at = now()
        return {"network": network_view(n, subnet_ids(n.id))}

    @app.delete("/v2.0/networks/<network_id>")
    def delete_network(network_id: str) -> None:
        n = writable_network(network_id, "network:delete_network")
        in_use = session().scalars(select(Port.id).where(Port.network_id == n.id).limit(1)).first()
        if in_use:
            raise Conflict(f"Unable to complete operation on network {network_id}. "
                           "There are one or more ports still in use on the network.")
        session().execute(delete(Subnet).where(Subnet.network_id == n.id))
        session().delete(n)

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
        rows, links = paged("subnets", query.order_by(Subnet.id))
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
        if cidr.version != 4 or cidr.prefixlen > 30:
            raise BadRequest("Invalid input for field 'cidr': an IPv4 network of /30 or larger.")
        gateway: str | None = field(body, "gateway_ip", str, str(next(cidr.hosts())))
        try:
            if gateway is not None and ipaddress.ip_address(gateway) not in cidr:
                raise ValueError(f"{gateway} not in {cidr}")
        except ValueError as exc:
            raise BadRequest(f"Invalid input for field 'gateway_ip': {exc}.") from None
        if "gateway_ip" in body and body["gateway_ip"] is None:
            gateway = None
        sub = create_subnet_row(session(), net, field(body, "name", str, ""), str(cidr), gateway,
                                _owner(ctx, body, "subnet"))
        pools = field(body, "allocation_pools", list, [])
        if pools:
            try:
                start = ipaddress.ip_address(field(pools[0], "start", str))
                end = ipaddress.ip_address(field(pools[0], "end", str))
            except ValueError as exc:
                raise BadRequest(f"Invalid input for field 'allocation_pools': {exc}") from None
            if start not in cidr or end not in cidr or int(end) < int(start):
                raise BadRequest("Invalid input for field 'allocation_pools': not in the cidr.")
            sub.pool_start, sub.pool_end = str(start), str(end)
        sub.enable_dhcp = field(body, "enable_dhcp", bool, False)
        sub.description = field(body, "description", str, "")
        bottle.response.status = 201
        return {"subnet": subnet_view(sub)}

    @app.get("/v2.0/subnets/<subnet_id>")
    def show_subnet(subnet_id: str) -> dict[str, Any]:
        return {"subnet": subnet_view(load_subnet(subnet_id)[0])}

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
        session().delete(sub)

    @app.get("/v2.0/ports")
    def list_ports() -> dict[str, Any]:
        ctx = reader()
        query = select(Port).order_by(Port.created_at)
        if not ctx.is_admin:
            query = query.where(Port.project_id == ctx.project_id)
        query = filtered(query, Port, ("id", "name", "network_id", "device_id", "device_owner",
                                       "tenant_id", "project_id", "mac_address"))
        rows, links = paged("ports", query.order_by(Port.id))
        return {"ports": [port_view(p, fixed_ips(p.id)) for p in rows], **links}

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

    @app.post("/v2.0/ports")
    def create_port() -> dict[str, Any]:
        ctx = writer()
        body = field(json_body(), "port", dict)
        net = load_network(field(body, "network_id", str))
        target = child_target(_owner(ctx, body, "port"), net)
        policy.enforce(ctx, "network:create_port", target)
        for rule in port_attribute_rules(body, "network:create_port"):
            policy.enforce(ctx, rule, target)
        subnets = list(session().scalars(select(Subnet).where(Subnet.network_id == net.id)))
        requested = field(body, "fixed_ips", list, None)
        wanted = requested_ips(requested, subnets, net.id)
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
        bottle.response.status = 201
        return {"port": port_view(port, fixed_ips(port.id))}

    @app.get("/v2.0/ports/<port_id>")
    def show_port(port_id: str) -> dict[str, Any]:
        p, _ = load_port(port_id)
        return {"port": port_view(p, fixed_ips(p.id))}

    def writable_port(port_id: str, action: str) -> tuple[Port, dict[str, Any]]:
        ctx = writer()
        p, target = load_port(port_id)
        policy.enforce(ctx, action, target)  # visible (a reader of its project): 403
        return p, target

    @app.put("/v2.0/ports/<port_id>")
    def update_port(port_id: str) -> dict[str, Any]:
        p, target = writable_port(port_id, "network:update_port")
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
            "binding:host_id": lambda v: setattr(p, "host_id", v),
            "status": lambda v: setattr(p, "status", v),
        }
        for key in body:
            if key == "admin_state_up":
                p.admin_state_up = field(body, key, bool)
            elif key in setters:
                setters[key](field(body, key, str))
            else:
                raise BadRequest(f"Invalid input for field '{key}': cannot be updated.")
        p.updated_at = now()
        return {"port": port_view(p, fixed_ips(p.id))}

    @app.delete("/v2.0/ports/<port_id>")
    def delete_port(port_id: str) -> None:
        p, _ = writable_port(port_id, "network:delete_port")
        session().execute(delete(IPAllocation).where(IPAllocation.port_id == p.id))
        session().delete(p)

    return app

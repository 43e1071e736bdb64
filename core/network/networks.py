"""Networks (``/v2.0/networks``): flat provider networks, shared or a project's."""

from __future__ import annotations

from typing import Any

import bottle
from sqlalchemy import delete, or_, select

from core.common import policy
from core.common.config import ApiConfig
from core.common.faults import BadRequest, Conflict, NotFound
from core.common.quota import Quotas
from core.common.timeutil import now
from core.common.wsgi import auth, field, json_body, session
from core.network import l3, segments
from core.network import quotas as network_quotas
from core.network.access import (
    filtered,
    load_network,
    network_target,
    owner_of,
    paged,
    reader,
    subnet_ids,
    writer,
)
from core.network.models import Network, Port, Subnet
from core.network.views import network_view

#: The physical network of the provider network bootstrap makes: a deployment maps it to
#: an interface (``network.datapath.physical_interface_mappings``).
PROVIDER_PHYSNET = "provider"


def create_network_row(s: Any, name: str, project_id: str | None, shared: bool,
                       external: bool = False, physical: str | None = PROVIDER_PHYSNET,
                       network_type: str = "flat", mtu: int = 1500) -> Network:
    ts = now()
    net = Network(name=name, project_id=project_id, shared=shared, external=external,
                  admin_state_up=True, network_type=network_type, physical_network=physical,
                  mtu=mtu, description="", created_at=ts, updated_at=ts)
    s.add(net)
    s.flush()
    return net


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


def shown(n: Network, subnets: list[str]) -> dict[str, Any]:
    """The network's view as the caller may see it (provider attributes: admins only)."""
    return segments.present(network_view(n, subnets), segments.segment_of(session(), n.id),
                            policy.allowed(auth(), "network:get_network:provider"))


def register(app: bottle.Bottle, quotas: Quotas, api: ApiConfig,
             segment_policy: segments.SegmentPolicy) -> None:
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
        rows, links = paged("networks", query.order_by(Network.id), api.max_limit)
        return {"networks": [shown(n, subnet_ids(n.id)) for n in rows], **links}

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
        wanted = segments.validate(segment_policy, segments.request_from(body))
        assert wanted.network_type is not None
        largest = segment_policy.mtu(wanted.network_type)
        mtu = field(body, "mtu", int, largest)
        if not 68 <= mtu <= largest:
            raise BadRequest(f"Invalid input for field 'mtu': {mtu} is not within 68.."
                             f"{largest}, the largest a {wanted.network_type} network "
                             "carries here.")
        owner = owner_of(ctx, body, "network")
        network_quotas.enforce(quotas, session(), owner, "network")
        net = create_network_row(session(), field(body, "name", str, ""),
                                 owner, shared, external, wanted.physical_network,
                                 wanted.network_type, mtu)
        segment = segments.allocate(session(), segment_policy, net.id, wanted)
        net.physical_network = segment.physical_network or None
        net.description = field(body, "description", str, "")
        net.admin_state_up = field(body, "admin_state_up", bool, True)
        bottle.response.status = 201
        return {"network": shown(net, [])}

    @app.get("/v2.0/networks/<network_id>")
    def show_network(network_id: str) -> dict[str, Any]:
        n = load_network(network_id)
        return {"network": shown(n, subnet_ids(n.id))}

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
        if any(k.startswith("provider:") for k in body):
            policy.enforce(auth(), "network:update_network:provider", network_target(n))
        if "router:external" in body:
            policy.enforce(auth(), "network:update_network:router:external", network_target(n))
            external = field(body, "router:external", bool)
            if n.external and not external and l3.external_in_use(session(), n.id):
                raise Conflict(f"External network {n.id} cannot be updated to be made "
                               "non-external, since it has existing gateway ports or "
                               "floating IPs.")
            n.external = external
        unknown = sorted(set(body) - {"name", "description", "admin_state_up", "shared",
                                      "router:external"})
        if unknown:
            raise BadRequest(f"Invalid input for field '{unknown[0]}': cannot be updated.")
        n.updated_at = now()
        return {"network": shown(n, subnet_ids(n.id))}

    @app.delete("/v2.0/networks/<network_id>")
    def delete_network(network_id: str) -> None:
        n = writable_network(network_id, "network:delete_network")
        in_use = session().scalars(select(Port.id).where(Port.network_id == n.id).limit(1)).first()
        if in_use:
            raise Conflict(f"Unable to complete operation on network {network_id}. "
                           "There are one or more ports still in use on the network.")
        session().execute(delete(Subnet).where(Subnet.network_id == n.id))
        session().delete(n)

"""What every network route shares: who the caller is, what it may see, and a page.

Visibility and rights follow Neutron's default policies (core/network/policies.py):
a project's readers see its resources and the shared and external networks, its
members change them, an admin sees and changes everything. Resources the caller
cannot see answer 404; ones it sees but may not change, 403; an unscoped token
gets 403 for every call.
"""

from __future__ import annotations

from typing import Any

import bottle
from sqlalchemy import select

from core.common import policy
from core.common.auth import AuthContext
from core.common.faults import Forbidden, NotFound
from core.common.paging import next_links, paginate
from core.common.wsgi import auth, base_url, session
from core.network.models import IPAllocation, Network, Subnet


def owner_of(ctx: AuthContext, body: dict[str, Any], kind: str) -> str | None:
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


def paged(collection: str, query: Any, max_limit: int
          ) -> tuple[list[Any], dict[str, Any]]:
    """A page of ``query``'s rows and its ``<collection>_links`` (Neutron's pagination)."""
    q = bottle.request.query
    rows = list(session().scalars(query))
    page, limit = paginate(rows, [r.id for r in rows], q, max_limit)
    links = next_links(f"{base_url()}/v2.0/{collection}", {k: q[k] for k in q}, limit,
                       len(page), page[-1].id if page else None)
    return page, ({f"{collection}_links": links} if links else {})

"""Network quotas: networks, ports, routers and floating IPs per project, Neutron's way.

Usage is counted from the networks and ports tables by owning project (a
server's port belongs to the server's project, so it counts there). Over a
limit, a create answers Neutron's 409 ``OverQuota`` ("Quota exceeded for
resources: ['port']."). The routes are Neutron's ``/v2.0/quotas`` (list of
projects with their own limits, show, default, details, update with
``check_limit``/``force``, and reset), so ``openstack quota show/set`` work
unchanged.
"""

from __future__ import annotations

from typing import Any

import bottle
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.common import policy
from core.common.config import QuotaConfig
from core.common.faults import BadRequest, Forbidden, OverQuota
from core.common.policy import Rule, admin, any_of, reader_of_project
from core.common.quota import (
    FLOATINGIPS,
    NETWORKS,
    PORTS,
    ROUTERS,
    SECURITY_GROUP_RULES,
    SECURITY_GROUPS,
    UNLIMITED,
    LimitBelowUsage,
    QuotaExceeded,
    Quotas,
)
from core.common.wsgi import auth, field, json_body, session
from core.network.l3_models import FloatingIP, Router
from core.network.models import Network, Port
from core.network.secgroup_models import SecurityGroup, SecurityGroupRule

RULES: dict[str, Rule] = {
    "network:quotas:show": any_of(admin, reader_of_project),
    "network:quotas:update": admin,
}
# Neutron's names of Haven's quota resources, and those Haven does not limit (shown
# unlimited; an update naming them is refused, never silently dropped).
NAMES = {"network": NETWORKS, "port": PORTS, "security_group": SECURITY_GROUPS,
         "security_group_rule": SECURITY_GROUP_RULES, "router": ROUTERS,
         "floatingip": FLOATINGIPS}
NOT_ENFORCED = ("subnet", "rbac_policy", "subnetpool")


def make_quotas(cfg: QuotaConfig) -> Quotas:
    def networks(sess: Session, project_id: str) -> int:
        return int(sess.scalar(select(func.count(Network.id)).where(
            Network.project_id == project_id)) or 0)

    def ports(sess: Session, project_id: str) -> int:
        return int(sess.scalar(select(func.count(Port.id)).where(
            Port.project_id == project_id)) or 0)

    def counter(column: Any) -> Any:
        def count(sess: Session, project_id: str) -> int:
            return int(sess.scalar(select(func.count()).where(column == project_id)) or 0)
        return count

    return Quotas(cfg, {NETWORKS: networks, PORTS: ports,
                        SECURITY_GROUPS: counter(SecurityGroup.project_id),
                        SECURITY_GROUP_RULES: counter(SecurityGroupRule.project_id),
                        ROUTERS: counter(Router.project_id),
                        FLOATINGIPS: counter(FloatingIP.project_id)})


def enforce(quotas: Quotas, sess: Session, project_id: str | None, kind: str) -> None:
    """Before creating one ``kind`` (a key of NAMES) for the project: 409 OverQuota
    with Neutron's text if it would pass the limit."""
    try:
        quotas.enforce(sess, project_id, {NAMES[kind]: 1})
    except QuotaExceeded:
        raise OverQuota(f"Quota exceeded for resources: ['{kind}'].") from None


def _view(limits: dict[str, int]) -> dict[str, Any]:
    shown: dict[str, Any] = {key: UNLIMITED for key in NOT_ENFORCED}
    shown.update({name: limits[resource] for name, resource in NAMES.items()})
    return shown


def register(app: bottle.Bottle, quotas: Quotas) -> None:
    policy.register(RULES)

    def allowed(project_id: str, action: str) -> None:
        if not policy.allowed(auth(), action, {"project_id": project_id}):
            raise Forbidden(f"rule:{action.replace('network:', '')} is disallowed by policy")

    @app.get("/v2.0/quotas")
    @app.get("/v2.0/quotas.json")
    def list_quotas() -> dict[str, Any]:
        policy.enforce(auth(), "network:quotas:update")
        sess = session()
        return {"quotas": [{**_view(quotas.limits(sess, p)), "project_id": p, "tenant_id": p}
                           for p in quotas.overridden_projects(sess)]}

    @app.get("/v2.0/quotas/<project_id>/default")
    @app.get("/v2.0/quotas/<project_id>/default.json")
    def show_default(project_id: str) -> dict[str, Any]:
        return {"quota": _view(dict(quotas.defaults))}

    @app.get("/v2.0/quotas/<project_id>/details")
    @app.get("/v2.0/quotas/<project_id>/details.json")
    def show_details(project_id: str) -> dict[str, Any]:
        allowed(project_id, "network:quotas:show")
        sess = session()
        used = quotas.usage(sess, project_id)
        limits = quotas.limits(sess, project_id)
        view: dict[str, Any] = {key: {"limit": UNLIMITED, "used": 0, "reserved": 0}
                                for key in NOT_ENFORCED}
        for name, resource in NAMES.items():
            view[name] = {"limit": limits[resource], "used": used[resource], "reserved": 0}
        return {"quota": view}

    @app.get("/v2.0/quotas/<project_id>")
    def show(project_id: str) -> dict[str, Any]:
        project_id = project_id.removesuffix(".json")
        allowed(project_id, "network:quotas:show")
        return {"quota": _view(quotas.limits(session(), project_id))}

    @app.put("/v2.0/quotas/<project_id>")
    def update(project_id: str) -> dict[str, Any]:
        project_id = project_id.removesuffix(".json")
        allowed(project_id, "network:quotas:update")
        spec = field(json_body(), "quota", dict)
        check_limit = spec.get("check_limit", False)
        force = spec.get("force", False)
        if not isinstance(check_limit, bool) or not isinstance(force, bool):
            raise BadRequest("Invalid input for 'check_limit'/'force': expected boolean.")
        values: dict[str, int] = {}
        for key, value in spec.items():
            if key in ("check_limit", "force"):
                continue
            if key not in NAMES:
                raise BadRequest(f"Invalid input for quota '{key}': Haven limits only "
                                 f"{', '.join(NAMES)}.")
            try:
                number = int(value) if not isinstance(value, bool) else None
            except (TypeError, ValueError):
                number = None
            if number is None or number < UNLIMITED or number > 0x7FFFFFFF:
                raise BadRequest(f"Invalid input for quota '{key}': an integer from -1.")
            values[NAMES[key]] = number
        try:
            quotas.set_limits(session(), project_id, values, force=force or not check_limit)
        except LimitBelowUsage as exc:
            name = next(n for n, r in NAMES.items() if r == exc.resource)
            raise BadRequest(f"Quota limit {exc.limit} for {name} must be greater than or "
                             f"equal to already used and reserved {exc.used}.") from None
        return {"quota": _view(quotas.limits(session(), project_id))}

    @app.delete("/v2.0/quotas/<project_id>")
    def reset(project_id: str) -> None:
        project_id = project_id.removesuffix(".json")
        allowed(project_id, "network:quotas:update")
        quotas.reset(session(), project_id)
        bottle.response.status = 204

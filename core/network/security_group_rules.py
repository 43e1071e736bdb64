"""Security group rules (``/v2.0/security-group-rules``).

A rule belongs to its group's project. Its body is checked whole
(:mod:`core.network.secgroup_rules`) before anything is written, so a refused rule
leaves nothing behind; the same rule twice in one group is Neutron's 409
``SecurityGroupRuleExists`` naming the rule that is already there. Rules cannot be
changed, only described (Neutron allows ``description`` alone on update).
"""

from __future__ import annotations

from typing import Any

import bottle
from sqlalchemy import select

from core.common import policy
from core.common.config import ApiConfig
from core.common.faults import BadRequest, Conflict, NotFound
from core.common.quota import Quotas
from core.common.timeutil import now
from core.common.wsgi import field, json_body, session
from core.network import agent_nudges
from core.network import quotas as network_quotas
from core.network.access import filtered, paged, reader, writer
from core.network.secgroup_models import SecurityGroup, SecurityGroupRule
from core.network.secgroup_rules import duplicate_key, parse_rule, spec_key
from core.network.security_groups import (
    add_rule,
    is_default,
    load_group,
    rule_view,
    underscored,
)


def load_rule(rule_id: str) -> SecurityGroupRule:
    r = session().get(SecurityGroupRule, rule_id)
    if r is None or not policy.allowed(reader(), "network:get_security_group_rule",
                                       {"project_id": r.project_id}):
        raise NotFound(f"Security group rule {rule_id} does not exist")
    return r


def _view(r: SecurityGroupRule) -> dict[str, Any]:
    group = session().get(SecurityGroup, r.security_group_id)
    return rule_view(r, group is not None and is_default(session(), group))


def register(app: bottle.Bottle, quotas: Quotas, api: ApiConfig) -> None:
    @app.get("/v2.0/security-group-rules")
    def list_rules() -> dict[str, Any]:
        ctx = reader()
        query = select(SecurityGroupRule)
        if not ctx.is_admin:
            query = query.where(SecurityGroupRule.project_id == ctx.project_id)
        query = filtered(query, SecurityGroupRule, (
            "id", "security_group_id", "direction", "ethertype", "protocol", "remote_group_id",
            "remote_ip_prefix", "port_range_min", "port_range_max", "tenant_id", "project_id",
            "description"))
        rows, links = paged("security-group-rules", query.order_by(
            SecurityGroupRule.created_at, SecurityGroupRule.id), api.max_limit)
        return {"security_group_rules": [_view(r) for r in rows], **underscored(links)}

    @app.post("/v2.0/security-group-rules")
    def create_rule() -> dict[str, Any]:
        ctx = writer()
        body = field(json_body(), "security_group_rule", dict)
        spec = parse_rule(body)
        description = field(body, "description", str, "")
        group = load_group(field(body, "security_group_id", str), ctx)
        policy.enforce(ctx, "network:create_security_group_rule", {"project_id":
                                                                   group.project_id})
        requested = body.get("project_id", body.get("tenant_id"))
        if requested is not None and requested != group.project_id:
            raise BadRequest("Invalid input for field 'project_id': a rule belongs to its "
                             f"security group's project ({group.project_id}).")
        if spec.remote_group_id is not None:
            load_group(spec.remote_group_id, ctx)  # 404 unless it exists and is visible
        key = spec_key(spec)
        for other in session().scalars(select(SecurityGroupRule).where(
                SecurityGroupRule.security_group_id == group.id)):
            if duplicate_key(other.direction, other.ethertype, other.protocol,
                             other.port_range_min, other.port_range_max,
                             other.remote_ip_prefix, other.remote_group_id) == key:
                raise Conflict(f"Security group rule already exists. Rule id is {other.id}.")
        network_quotas.enforce(quotas, session(), group.project_id, "security_group_rule")
        rule = add_rule(session(), group, spec, description)
        group.revision_number += 1
        group.updated_at = rule.created_at
        session().flush()
        agent_nudges.after_commit(agent_nudges.rule_hosts(session(), group.id))
        bottle.response.status = 201
        return {"security_group_rule": _view(rule)}

    @app.get("/v2.0/security-group-rules/<rule_id>")
    def show_rule(rule_id: str) -> dict[str, Any]:
        return {"security_group_rule": _view(load_rule(rule_id))}

    @app.put("/v2.0/security-group-rules/<rule_id>")
    def update_rule(rule_id: str) -> dict[str, Any]:
        ctx = writer()
        r = load_rule(rule_id)
        policy.enforce(ctx, "network:update_security_group_rule", {"project_id": r.project_id})
        body = field(json_body(), "security_group_rule", dict)
        unknown = sorted(set(body) - {"description"})
        if unknown:
            raise BadRequest(f"Invalid input for field '{unknown[0]}': a rule cannot be "
                             "changed, only its description.")
        if "description" in body:
            r.description = field(body, "description", str)
            r.updated_at = now()
        return {"security_group_rule": _view(r)}

    @app.delete("/v2.0/security-group-rules/<rule_id>")
    def delete_rule(rule_id: str) -> None:
        ctx = writer()
        r = load_rule(rule_id)
        policy.enforce(ctx, "network:delete_security_group_rule", {"project_id": r.project_id})
        agent_nudges.after_commit(agent_nudges.rule_hosts(session(), r.security_group_id))
        group = session().get(SecurityGroup, r.security_group_id)
        if group is not None:
            group.revision_number += 1
            group.updated_at = now()
        session().delete(r)

"""Security groups (``/v2.0/security-groups``), and each project's ``default`` group.

As Neutron (``neutron/db/securitygroups_db.py``): a project's ``default`` group is
made the first time it is needed (the project lists groups, creates a group, or a
port is created in it) with Neutron's rules (egress anywhere, ingress from the
group's own members), and a member cannot delete it or rename it (409). A new group
gets the two egress rules. A group a port still uses cannot be deleted (409); rules
of other groups naming it as their remote group go with it, as in Neutron.

Who may do what is Neutron's default policy (``neutron/conf/policies/
security_group.py``): a project's readers see its groups and rules, its members
create, change and delete them, an administrator everything.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import bottle
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.common import policy
from core.common.auth import AuthContext
from core.common.config import ApiConfig
from core.common.faults import BadRequest, Conflict, NotFound
from core.common.policy import Rule, admin, any_of, member_of_project, reader_of_project
from core.common.quota import Quotas
from core.common.timeutil import iso, now
from core.common.wsgi import field, json_body, session
from core.network import agent_nudges
from core.network import quotas as network_quotas
from core.network.access import filtered, owner_of, paged, reader, writer
from core.network.policies import scoped_member
from core.network.secgroup_models import (
    DefaultSecurityGroup,
    PortSecurityGroup,
    SecurityGroup,
    SecurityGroupRule,
)
from core.network.secgroup_rules import RuleSpec, default_rules

RULES: dict[str, Rule] = {
    "network:get_security_group": any_of(admin, reader_of_project),
    "network:create_security_group": scoped_member,
    "network:update_security_group": any_of(admin, member_of_project),
    "network:delete_security_group": any_of(admin, member_of_project),
    "network:get_security_group_rule": any_of(admin, reader_of_project),
    "network:create_security_group_rule": any_of(admin, member_of_project),
    "network:update_security_group_rule": any_of(admin, member_of_project),
    "network:delete_security_group_rule": any_of(admin, member_of_project),
}
DEFAULT = "default"
GROUP_FIELDS = frozenset({"name", "description", "tenant_id", "project_id", "stateful"})


def rule_view(r: SecurityGroupRule, default_group: bool) -> dict[str, Any]:
    normalized = (None if r.remote_ip_prefix is None
                  else str(ipaddress.ip_network(r.remote_ip_prefix, strict=False)))
    return {
        "id": r.id, "security_group_id": r.security_group_id, "direction": r.direction,
        "ethertype": r.ethertype, "protocol": r.protocol, "port_range_min": r.port_range_min,
        "port_range_max": r.port_range_max, "remote_ip_prefix": r.remote_ip_prefix,
        "normalized_cidr": normalized, "remote_group_id": r.remote_group_id,
        "remote_address_group_id": None, "description": r.description,
        "tenant_id": r.project_id or "", "project_id": r.project_id or "",
        "belongs_to_default_sg": default_group, "revision_number": 0,
        "created_at": iso(r.created_at), "updated_at": iso(r.updated_at),
    }


def underscored(links: dict[str, Any]) -> dict[str, Any]:
    """Neutron's ``security_groups_links`` (the collection's path has hyphens)."""
    return {k.replace("-", "_"): v for k, v in links.items()}


def is_default(sess: Session, group: SecurityGroup) -> bool:
    return sess.scalar(select(func.count()).select_from(DefaultSecurityGroup).where(
        DefaultSecurityGroup.security_group_id == group.id)) == 1


def group_view(sess: Session, g: SecurityGroup) -> dict[str, Any]:
    default = is_default(sess, g)
    rules = sess.scalars(select(SecurityGroupRule).where(
        SecurityGroupRule.security_group_id == g.id).order_by(SecurityGroupRule.created_at,
                                                               SecurityGroupRule.id))
    return {
        "id": g.id, "name": g.name, "description": g.description,
        "tenant_id": g.project_id or "", "project_id": g.project_id or "",
        "security_group_rules": [rule_view(r, default) for r in rules], "stateful": g.stateful,
        "shared": False, "tags": [], "revision_number": g.revision_number,
        "created_at": iso(g.created_at), "updated_at": iso(g.updated_at),
    }


def add_rule(sess: Session, group: SecurityGroup, spec: RuleSpec, description: str = ""
             ) -> SecurityGroupRule:
    ts = now()
    rule = SecurityGroupRule(
        security_group_id=group.id, project_id=group.project_id, direction=spec.direction,
        ethertype=spec.ethertype, protocol=spec.protocol, port_range_min=spec.port_range_min,
        port_range_max=spec.port_range_max, remote_ip_prefix=spec.remote_ip_prefix,
        remote_group_id=spec.remote_group_id, description=description, created_at=ts,
        updated_at=ts)
    sess.add(rule)
    return rule


def make_group(sess: Session, name: str, project_id: str | None, description: str,
               default: bool) -> SecurityGroup:
    """A group with Neutron's starting rules (flushed, so it has its id)."""
    ts = now()
    group = SecurityGroup(name=name, project_id=project_id, description=description,
                          stateful=True, revision_number=0, created_at=ts, updated_at=ts)
    sess.add(group)
    sess.flush()
    for spec in default_rules(group.id, default):
        add_rule(sess, group, spec)
    sess.flush()
    return group


def ensure_default(sess: Session, project_id: str) -> str:
    """The id of the project's ``default`` group, made now if it has none.

    Two requests making it at once (two API nodes) both insert the project's row of
    ``default_security_groups``; the key lets one win, the other (inside a savepoint)
    reads the winner's group instead of making a second one.
    """
    found = sess.scalar(select(DefaultSecurityGroup.security_group_id).where(
        DefaultSecurityGroup.project_id == project_id))
    if found is not None:
        return str(found)
    try:
        with sess.begin_nested():
            group = make_group(sess, DEFAULT, project_id, "Default security group", True)
            sess.add(DefaultSecurityGroup(project_id=project_id, security_group_id=group.id))
            sess.flush()
            return group.id
    except IntegrityError:
        winner = sess.scalar(select(DefaultSecurityGroup.security_group_id).where(
            DefaultSecurityGroup.project_id == project_id).execution_options(
                populate_existing=True))
        if winner is None:
            raise
        return str(winner)


def group_target(g: SecurityGroup) -> dict[str, Any]:
    return {"project_id": g.project_id}


def load_group(group_id: str, ctx: AuthContext | None = None) -> SecurityGroup:
    """The group, or 404 if it does not exist or the caller may not see it."""
    g = session().get(SecurityGroup, group_id)
    if g is None or not policy.allowed(ctx or reader(), "network:get_security_group",
                                       group_target(g)):
        raise NotFound(f"Security group {group_id} does not exist")
    return g


def writable_group(group_id: str, action: str) -> SecurityGroup:
    ctx = writer()
    g = load_group(group_id, ctx)
    policy.enforce(ctx, action, group_target(g))
    return g


def _name(body: dict[str, Any], default: str | None = None) -> str:
    name = field(body, "name", str, default)
    if len(name) > 255:
        raise BadRequest("Invalid input for field 'name': longer than 255 characters.")
    return name


def _check_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(unknown)}'")
    if body.get("stateful") is False:
        raise BadRequest("Invalid input for field 'stateful': Haven's security groups are "
                         "stateful only.")


def register(app: bottle.Bottle, quotas: Quotas, api: ApiConfig) -> None:
    policy.register(RULES)

    @app.get("/v2.0/security-groups")
    def list_groups() -> dict[str, Any]:
        ctx = reader()
        assert ctx.project_id is not None  # reader() refuses unscoped tokens
        ensure_default(session(), ctx.project_id)
        query = select(SecurityGroup)
        if not ctx.is_admin:
            query = query.where(SecurityGroup.project_id == ctx.project_id)
        query = filtered(query, SecurityGroup, ("id", "name", "description", "tenant_id",
                                                "project_id"))
        rows, links = paged("security-groups", query.order_by(SecurityGroup.created_at,
                                                              SecurityGroup.id), api.max_limit)
        return {"security_groups": [group_view(session(), g) for g in rows], **underscored(links)}

    @app.post("/v2.0/security-groups")
    def create_group() -> dict[str, Any]:
        ctx = writer()
        body = field(json_body(), "security_group", dict)
        _check_fields(body, GROUP_FIELDS)
        policy.enforce(ctx, "network:create_security_group")
        owner = owner_of(ctx, body, "security group")
        assert owner is not None
        name = _name(body, "")
        description = field(body, "description", str, "")
        ensure_default(session(), owner)
        if name == DEFAULT:
            raise Conflict("Default security group already exists.")
        network_quotas.enforce(quotas, session(), owner, "security_group")
        group = make_group(session(), name, owner, description, False)
        bottle.response.status = 201
        return {"security_group": group_view(session(), group)}

    @app.get("/v2.0/security-groups/<group_id>")
    def show_group(group_id: str) -> dict[str, Any]:
        return {"security_group": group_view(session(), load_group(group_id))}

    @app.put("/v2.0/security-groups/<group_id>")
    def update_group(group_id: str) -> dict[str, Any]:
        g = writable_group(group_id, "network:update_security_group")
        body = field(json_body(), "security_group", dict)
        _check_fields(body, frozenset({"name", "description", "stateful"}))
        if "name" in body:
            name = _name(body)
            if is_default(session(), g) and name != DEFAULT:
                raise Conflict("Updating default security group not allowed.")
            if name == DEFAULT and not is_default(session(), g):
                raise Conflict("Default security group already exists.")
            g.name = name
        if "description" in body:
            g.description = field(body, "description", str)
        g.revision_number += 1
        g.updated_at = now()
        return {"security_group": group_view(session(), g)}

    @app.delete("/v2.0/security-groups/<group_id>")
    def delete_group(group_id: str) -> None:
        ctx = writer()
        g = writable_group(group_id, "network:delete_security_group")
        if is_default(session(), g) and not ctx.is_admin:
            raise Conflict("Insufficient rights for removing default security group.")
        if session().scalar(select(PortSecurityGroup.port_id).where(
                PortSecurityGroup.security_group_id == g.id).limit(1)) is not None:
            raise Conflict(f"Security Group {g.id} in use.")
        sess = session()
        # its members' addresses leave the filters of groups naming it as remote group
        agent_nudges.after_commit(agent_nudges.watcher_hosts(sess, [g.id]))
        sess.execute(delete(SecurityGroupRule).where(SecurityGroupRule.remote_group_id == g.id))
        sess.execute(delete(SecurityGroupRule).where(SecurityGroupRule.security_group_id == g.id))
        sess.execute(delete(DefaultSecurityGroup).where(
            DefaultSecurityGroup.security_group_id == g.id))
        sess.delete(g)
        try:
            sess.flush()
        except IntegrityError:  # a port bound to it in the meantime
            raise Conflict(f"Security Group {g.id} in use.") from None

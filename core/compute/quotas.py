"""Compute quotas: instances, cores and RAM per project, Nova's way.

Usage is counted from the instances table (every server not deleted, ERROR
ones included, as Nova counts them); an evacuation or a rebuild moves an
instance but makes no new one, so it is never counted twice. The routes are
Nova's ``os-quota-sets`` (show, detail, defaults, update and revert by an
admin) and ``limits``, so ``openstack quota show/set`` and ``openstack limits
show`` work unchanged.

Key pairs are Nova's per-user resource: the limit is the project's (``key_pairs``,
set like the others), the count is the user's keys (:func:`enforce_key_pairs`).
As in Nova, a project's quota view shows no usage for them (a project has no
keys of its own).
"""

from __future__ import annotations

import hashlib
from typing import Any

import bottle
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.common import policy
from core.common.clients import ServiceCallError, ServiceClients
from core.common.config import QuotaConfig
from core.common.faults import BadRequest, Fault, Forbidden
from core.common.policy import Rule, admin, any_of, reader_of_project
from core.common.quota import (
    CORES,
    INSTANCES,
    KEY_PAIRS,
    RAM,
    UNLIMITED,
    LimitBelowUsage,
    QuotaExceeded,
    Quotas,
    lock_project,
)
from core.common.wsgi import auth, field, json_body, session
from core.compute.keypair_models import KeyPair
from core.compute.models import Instance

RULES: dict[str, Rule] = {
    "compute:quotas:show": any_of(admin, reader_of_project),
    "compute:quotas:update": admin,
}
MAX_METADATA_ITEMS = 128  # servers.MAX_METADATA: a fixed limit, shown as Nova shows its quota
# Nova's quota-set keys (up to microversion 2.35) that Haven does not limit: shown as
# unlimited, refused in an update (a limit Haven would not enforce is not accepted).
NOT_ENFORCED = ("fixed_ips", "floating_ips", "injected_file_content_bytes",
                "injected_file_path_bytes", "injected_files",
                "security_group_rules", "security_groups", "server_group_members",
                "server_groups")


def _counter(column: Any) -> Any:
    def count(sess: Session, project_id: str) -> int:
        return int(sess.scalar(select(func.coalesce(column, 0)).where(
            Instance.project_id == project_id, Instance.deleted.is_(False))) or 0)

    return count


def _no_project_usage(_sess: Session, _project_id: str) -> int:
    """Key pairs belong to users: a project's usage of them is shown as 0 (Nova's
    quota views do the same); :func:`enforce_key_pairs` counts the user's."""
    return 0


def make_quotas(cfg: QuotaConfig) -> Quotas:
    return Quotas(cfg, {INSTANCES: _counter(func.count(Instance.id)),
                        CORES: _counter(func.sum(Instance.vcpus)),
                        RAM: _counter(func.sum(Instance.memory_mb)),
                        KEY_PAIRS: _no_project_usage})


def _user_lock_key(user_id: str) -> str:
    """The quota lock row serialising one user's key pair creations (any project)."""
    return "user:" + hashlib.sha256(user_id.encode()).hexdigest()[:48]


def enforce_key_pairs(quotas: Quotas, sess: Session, project_id: str | None,
                      user_id: str) -> None:
    """Nova's check before a key pair is made for ``user_id``: 403 once the user has
    as many as the limit of the caller's project (the defaults without a project).

    Call it in the transaction that then inserts the key: the user's lock row makes
    concurrent creations count one after the other (core.common.quota).
    """
    def limit() -> int:
        if project_id is None:
            return quotas.defaults[KEY_PAIRS]
        return quotas.limits(sess, project_id, [KEY_PAIRS])[KEY_PAIRS]

    if limit() == UNLIMITED:
        return
    lock_project(sess, _user_lock_key(user_id))
    allowed = limit()  # again: after the lock, current
    used = int(sess.scalar(select(func.count(KeyPair.id)).where(
        KeyPair.user_id == user_id)) or 0)
    if allowed != UNLIMITED and used + 1 > allowed:
        raise Forbidden("Quota exceeded, too many key pairs.")


def enforce_server(quotas: Quotas, sess: Session, project_id: str | None, vcpus: int,
                   memory_mb: int) -> None:
    """Nova's check before a server is made: 403 with Nova's TooManyInstances text."""
    try:
        quotas.enforce(sess, project_id, {INSTANCES: 1, CORES: vcpus, RAM: memory_mb})
    except QuotaExceeded as exc:
        overs = exc.overs
        names = ", ".join(o.resource for o in overs)
        raise Forbidden(
            f"Quota exceeded for {names}: Requested "
            f"{', '.join(str(o.requested) for o in overs)}, but already used "
            f"{', '.join(str(o.used) for o in overs)} of "
            f"{', '.join(str(o.limit) for o in overs)} {names}") from None


def check_ports(clients: ServiceClients, token: str, project_id: str | None) -> None:
    """Nova's look at the network quota before a server that needs a new port is
    made: 403 "Maximum number of ports exceeded" instead of a server in ERROR. Only
    a courtesy: the network service's own check is the one that holds under races."""
    if project_id is None:
        return
    try:
        port = clients.request("GET", "network", f"/v2.0/quotas/{project_id}/details",
                               token=token).json()["quota"]["port"]
    except ServiceCallError as exc:
        raise Fault(f"Network service error: {exc}", 503) from None
    if port["limit"] != UNLIMITED and port["used"] >= port["limit"]:
        raise Forbidden("Maximum number of ports exceeded")


def _quota_set(quotas: Quotas, sess: Session, project_id: str, detail: bool,
               limits: dict[str, int] | None = None) -> dict[str, Any]:
    limits = limits if limits is not None else quotas.limits(sess, project_id)
    shown: dict[str, Any] = {key: UNLIMITED for key in NOT_ENFORCED}
    shown["metadata_items"] = MAX_METADATA_ITEMS
    shown.update(limits)
    if detail:
        used = quotas.usage(sess, project_id)
        shown = {k: {"limit": v, "in_use": used.get(k, 0), "reserved": 0}
                 for k, v in shown.items()}
    return shown


def _check_target(project_id: str, action: str) -> None:
    if bottle.request.query.get("user_id"):
        raise BadRequest("Haven keeps quotas per project only: 'user_id' is not supported.")
    policy.enforce(auth(), action, {"project_id": project_id})


def register(app: bottle.Bottle, quotas: Quotas) -> None:
    policy.register(RULES)

    @app.get("/v2.1/os-quota-sets/<project_id>")
    def show(project_id: str) -> dict[str, Any]:
        _check_target(project_id, "compute:quotas:show")
        return {"quota_set": {"id": project_id,
                              **_quota_set(quotas, session(), project_id, False)}}

    @app.get("/v2.1/os-quota-sets/<project_id>/detail")
    def detail(project_id: str) -> dict[str, Any]:
        _check_target(project_id, "compute:quotas:show")
        return {"quota_set": {"id": project_id,
                              **_quota_set(quotas, session(), project_id, True)}}

    @app.get("/v2.1/os-quota-sets/<project_id>/defaults")
    def defaults(project_id: str) -> dict[str, Any]:
        values = {r: quotas.defaults[r] for r in quotas.resources}
        return {"quota_set": {"id": project_id,
                              **_quota_set(quotas, session(), project_id, False, values)}}

    @app.put("/v2.1/os-quota-sets/<project_id>")
    def update(project_id: str) -> dict[str, Any]:
        _check_target(project_id, "compute:quotas:update")
        spec = field(json_body(), "quota_set", dict)
        force = spec.get("force", False)
        if not isinstance(force, bool):
            raise BadRequest("Invalid input for field 'quota_set.force': expected boolean.")
        values: dict[str, int] = {}
        for key, value in spec.items():
            if key == "force":
                continue
            if key not in quotas.resources:
                raise BadRequest(f"Invalid input for field 'quota_set.{key}': Haven enforces "
                                 f"only {', '.join(quotas.resources)} here.")
            values[key] = _limit_value(key, value)
        try:
            quotas.set_limits(session(), project_id, values, force=force)
        except LimitBelowUsage as exc:
            raise BadRequest(str(exc)) from None
        return {"quota_set": _quota_set(quotas, session(), project_id, False)}

    @app.delete("/v2.1/os-quota-sets/<project_id>")
    def revert(project_id: str) -> None:
        _check_target(project_id, "compute:quotas:update")
        quotas.reset(session(), project_id)
        bottle.response.status = 202

    @app.get("/v2.1/limits")
    def limits() -> dict[str, Any]:
        ctx = auth()
        project_id = bottle.request.query.get("tenant_id") or ctx.project_id
        if project_id is None:
            raise Forbidden("A project-scoped token is needed to read limits.")
        policy.enforce(ctx, "compute:quotas:show", {"project_id": project_id})
        sess = session()
        limit = quotas.limits(sess, project_id)
        used = quotas.usage(sess, project_id)
        absolute = {
            "maxTotalInstances": limit[INSTANCES], "totalInstancesUsed": used[INSTANCES],
            "maxTotalCores": limit[CORES], "totalCoresUsed": used[CORES],
            "maxTotalRAMSize": limit[RAM], "totalRAMUsed": used[RAM],
            "maxServerMeta": MAX_METADATA_ITEMS, "maxImageMeta": MAX_METADATA_ITEMS,
            "maxPersonality": UNLIMITED, "maxPersonalitySize": UNLIMITED,
            "maxTotalKeypairs": limit[KEY_PAIRS], "maxServerGroups": UNLIMITED,
            "maxServerGroupMembers": UNLIMITED, "maxSecurityGroups": UNLIMITED,
            "maxSecurityGroupRules": UNLIMITED, "maxTotalFloatingIps": UNLIMITED,
        }
        return {"limits": {"rate": [], "absolute": absolute}}


def _limit_value(key: str, value: Any) -> int:
    """Nova accepts an integer or a string of one, -1 and up."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadRequest(f"Invalid input for field 'quota_set.{key}': expected an integer.")
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"Invalid input for field 'quota_set.{key}': expected an "
                         "integer.") from None
    if number < UNLIMITED or number > 0x7FFFFFFF:
        raise BadRequest(f"Invalid input for field 'quota_set.{key}': must be between -1 "
                         "and 2147483647.")
    return number

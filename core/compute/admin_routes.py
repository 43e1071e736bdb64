"""Flavors, hypervisors, compute services and server groups."""

from __future__ import annotations

from typing import Any

import bottle
from sqlalchemy import func, select, update

from core.common import policy
from core.common.db import rowcount
from core.common.faults import BadRequest, Conflict, NotFound
from core.common.timeutil import now
from core.common.wsgi import auth, base_url, field, json_body, session
from core.compute.api import ComputeContext, microversion
from core.compute.models import ComputeService, Flavor, Instance, ServerGroup
from core.compute.views import flavor_view, group_view, hypervisor_view, service_view

GROUP_POLICIES = ("anti-affinity", "affinity", "soft-anti-affinity", "soft-affinity")


def register(app: bottle.Bottle, ctx: ComputeContext) -> None:
    register_flavors(app)
    register_hypervisors(app, ctx)
    register_groups(app)

    @app.get("/v2.1/os-availability-zone")
    def zones() -> dict[str, Any]:
        return {"availabilityZoneInfo": [{"zoneName": "nova", "zoneState": {"available": True},
                                          "hosts": None}]}


def register_flavors(app: bottle.Bottle) -> None:
    def load(flavor_id: str) -> Flavor:
        f = session().get(Flavor, flavor_id)
        # a private flavor does not exist for those who may not use it (as in Nova)
        if f is None or f.deleted or not (
                f.is_public or policy.allowed(auth(), "compute:flavors:private")):
            raise NotFound(f"Flavor {flavor_id} could not be found.")
        return f

    def listing() -> list[Flavor]:
        query = select(Flavor).where(Flavor.deleted.is_(False)).order_by(Flavor.ram_mb,
                                                                          Flavor.id)
        if not policy.allowed(auth(), "compute:flavors:private"):
            query = query.where(Flavor.is_public.is_(True))
        return list(session().scalars(query))

    @app.get("/v2.1/flavors")
    def list_flavors() -> dict[str, Any]:
        return {"flavors": [{"id": f.id, "name": f.name, "links": flavor_view(
            base_url(), f)["links"], "description": f.description} for f in listing()]}

    @app.get("/v2.1/flavors/detail")
    def list_flavors_detail() -> dict[str, Any]:
        return {"flavors": [flavor_view(base_url(), f) for f in listing()]}

    @app.get("/v2.1/flavors/<flavor_id>")
    def show_flavor(flavor_id: str) -> dict[str, Any]:
        return {"flavor": flavor_view(base_url(), load(flavor_id))}

    @app.get("/v2.1/flavors/<flavor_id>/os-extra_specs")
    def extra_specs(flavor_id: str) -> dict[str, Any]:
        load(flavor_id)
        return {"extra_specs": {}}

    @app.post("/v2.1/flavors")
    def create_flavor() -> dict[str, Any]:
        policy.enforce(auth(), "compute:flavors:manage")
        spec = field(json_body(), "flavor", dict)
        name = field(spec, "name", str).strip()
        if not name or len(name) > 255:
            raise BadRequest("Invalid input for field 'flavor.name': 1 to 255 characters.")
        values = {}
        for key, low in (("ram", 1), ("vcpus", 1), ("disk", 0)):
            value: int | str = field(spec, key, (int, str))
            try:
                number = int(value)
            except ValueError:
                raise BadRequest(f"Invalid input for field 'flavor.{key}': an integer.") from None
            if number < low:
                raise BadRequest(f"Invalid input for field 'flavor.{key}': must be >= {low}.")
            values[key] = number
        flavor_id: str | int | None = field(spec, "id", (str, int), None)
        if flavor_id is not None and session().get(Flavor, str(flavor_id)) is not None:
            raise Conflict(f"Flavor with ID {flavor_id} already exists.")
        if session().scalars(select(Flavor).where(Flavor.name == name,
                                                  Flavor.deleted.is_(False))).first():
            raise Conflict(f"Flavor with name {name} already exists.")
        flavor = Flavor(name=name, vcpus=values["vcpus"], ram_mb=values["ram"],
                        disk_gb=values["disk"],
                        is_public=field(spec, "os-flavor-access:is_public", bool, True),
                        description=field(spec, "description", str, None), deleted=False)
        if flavor_id is not None:
            flavor.id = str(flavor_id)
        session().add(flavor)
        session().flush()
        return {"flavor": flavor_view(base_url(), flavor)}

    @app.delete("/v2.1/flavors/<flavor_id>")
    def delete_flavor(flavor_id: str) -> None:
        policy.enforce(auth(), "compute:flavors:manage")
        flavor = load(flavor_id)
        flavor.deleted = True
        flavor.name = f"{flavor.name}.deleted.{flavor.id}"[:255]
        bottle.response.status = 202


def register_hypervisors(app: bottle.Bottle, ctx: ComputeContext) -> None:
    def services() -> list[ComputeService]:
        policy.enforce(auth(), "compute:hypervisors")
        return list(session().scalars(select(ComputeService).order_by(ComputeService.host)))

    def running_vms() -> dict[str, int]:
        rows = session().execute(select(Instance.host, func.count()).where(
            Instance.deleted.is_(False), Instance.host.is_not(None)).group_by(Instance.host))
        return {host: count for host, count in rows if host}

    def hypervisors(detail: bool) -> dict[str, Any]:
        counts = running_vms()
        return {"hypervisors": [hypervisor_view(s, ctx.service_up(s.last_seen, s.forced_down),
                                                counts.get(s.host, 0), detail)
                                for s in services()]}

    app.route("/v2.1/os-hypervisors", "GET", lambda: hypervisors(False))
    app.route("/v2.1/os-hypervisors/detail", "GET", lambda: hypervisors(True))

    @app.get("/v2.1/os-hypervisors/<hyp_id>")
    def show_hypervisor(hyp_id: str) -> dict[str, Any]:
        for s in services():
            if str(s.id) == hyp_id or s.host == hyp_id:
                count = running_vms().get(s.host, 0)
                return {"hypervisor": hypervisor_view(
                    s, ctx.service_up(s.last_seen, s.forced_down), count, True)}
        raise NotFound(f"Hypervisor {hyp_id} could not be found.")

    @app.get("/v2.1/os-services")
    def list_services() -> dict[str, Any]:
        policy.enforce(auth(), "compute:services")
        q = bottle.request.query
        rows = session().scalars(select(ComputeService).order_by(ComputeService.host))
        out = [service_view(s, ctx.service_up(s.last_seen, s.forced_down)) for s in rows
               if q.get("host", s.host) == s.host and q.get("binary", "nova-compute") ==
               "nova-compute"]
        return {"services": out}

    def change_service(action: str) -> dict[str, Any]:
        policy.enforce(auth(), "compute:services")
        body = json_body()
        host = field(body, "host", str)
        binary = field(body, "binary", str, "nova-compute")
        if binary != "nova-compute":
            raise BadRequest(f"Invalid input for field 'binary': only nova-compute, not {binary}.")
        values: dict[str, Any] = {"updated_at": now()}
        result: dict[str, Any] = {"host": host, "binary": binary}
        if action == "enable":
            values.update(enabled=True, disabled_reason=None)
            result["status"] = "enabled"
        elif action in ("disable", "disable-log-reason"):
            values.update(enabled=False)
            if action == "disable-log-reason":
                reason = field(body, "disabled_reason", str)
                if len(reason) > 255:
                    raise BadRequest("Invalid input for field 'disabled_reason': too long.")
                values["disabled_reason"] = reason
                result["disabled_reason"] = reason
            result["status"] = "disabled"
        else:  # force-down
            if microversion() < (2, 11):
                raise NotFound("force-down needs microversion 2.11 or later.")
            forced = field(body, "forced_down", bool)
            values["forced_down"] = forced
            result["forced_down"] = forced
        changed = session().execute(update(ComputeService).where(
            ComputeService.host == host).values(**values))
        if rowcount(changed) == 0:
            raise NotFound(f"Host {host} not found.")
        return {"service": result}

    for action in ("enable", "disable", "disable-log-reason", "force-down"):
        app.route(f"/v2.1/os-services/{action}", "PUT",
                  lambda action=action: change_service(action))


def register_groups(app: bottle.Bottle) -> None:
    def members(group_id: str) -> list[str]:
        return list(session().scalars(select(Instance.id).where(
            Instance.server_group_id == group_id, Instance.deleted.is_(False))))

    def load(group_id: str) -> ServerGroup:
        g = session().get(ServerGroup, group_id)
        if g is None or g.deleted or not policy.allowed(
                auth(), "compute:server_groups:read", {"project_id": g.project_id}):
            raise NotFound(f"Server group {group_id} could not be found.")
        return g

    @app.get("/v2.1/os-server-groups")
    def list_groups() -> dict[str, Any]:
        query = select(ServerGroup).where(ServerGroup.deleted.is_(False))
        all_projects = bottle.request.query.get("all_projects", "").lower() in ("1", "true")
        if not (all_projects and auth().is_admin):
            query = query.where(ServerGroup.project_id == auth().project_id)
        return {"server_groups": [group_view(g, members(g.id))
                                  for g in session().scalars(query)]}

    @app.post("/v2.1/os-server-groups")
    def create_group() -> dict[str, Any]:
        policy.enforce(auth(), "compute:server_groups:create")
        spec = field(json_body(), "server_group", dict)
        name = field(spec, "name", str).strip()
        if not name or len(name) > 255:
            raise BadRequest("Invalid input for field 'server_group.name': 1 to 255 chars.")
        policies = field(spec, "policies", list, None)
        chosen = policies[0] if policies else field(spec, "policy", str, None)
        if (policies is not None and len(policies) != 1) or chosen not in GROUP_POLICIES:
            raise BadRequest("Invalid input for field 'server_group.policies': exactly one of "
                             f"{', '.join(GROUP_POLICIES)}.")
        ctx_auth = auth()
        group = ServerGroup(name=name, policy=chosen, project_id=ctx_auth.project_id or "",
                            user_id=ctx_auth.user_id, generation=0, deleted=False,
                            created_at=now())
        session().add(group)
        session().flush()
        return {"server_group": group_view(group, [])}

    @app.get("/v2.1/os-server-groups/<group_id>")
    def show_group(group_id: str) -> dict[str, Any]:
        g = load(group_id)
        return {"server_group": group_view(g, members(g.id))}

    @app.delete("/v2.1/os-server-groups/<group_id>")
    def delete_group(group_id: str) -> None:
        g = load(group_id)
        policy.enforce(auth(), "compute:server_groups:write", {"project_id": g.project_id})
        g.deleted = True
        bottle.response.status = 204

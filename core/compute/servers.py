"""Server routes: create, list, show, update and delete (the ``/servers`` resource).

Routes parse, check policy and call; the work is elsewhere, as in Nova's layers:
placement and claims in :mod:`core.compute.placement`, the port in
:mod:`core.compute.ports`, the image lookup in :mod:`core.compute.image_refs`, the
agent's messages in :mod:`core.compute.messages`. The server's metadata and its
actions are their own modules (:mod:`core.compute.server_metadata`,
:mod:`core.compute.server_actions`), registered with this one.

Create is done in three committed steps, each safe to repeat:

1. validate everything the client sent (flavor here; image and network by
   asking those services with the client's own token, as Nova does) and
   insert the instance as BUILD/scheduling;
2. create its port (the network service hands out the fixed IP);
3. schedule: claim a host with a compare-and-swap (placement.py) and mark the
   instance spawning on it; then nudge that host's agent over the bus.

If no host fits, the instance goes to ERROR with Nova's "No valid host" fault
and its port is released; nothing is over-committed. The agent does the rest
and also finds the work on its own by reconciling the database, so a lost
nudge only delays the boot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import bottle
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.common import policy
from core.common.faults import BadRequest, Fault, Forbidden
from core.common.paging import after_marker, next_links, page_limit
from core.common.timeutil import now
from core.common.wsgi import auth, base_url, commit, field, json_body, session
from core.compute import (
    create_fields,
    keypairs,
    placement,
    ports,
    server_actions,
    server_metadata,
    server_secgroups,
    states,
)
from core.compute.api import ComputeContext, microversion
from core.compute.image_refs import disk_needed_gb, resolve_image
from core.compute.instances import load_server, metadata_of, nudge, transition
from core.compute.metadata_rules import check_admin_keys, check_metadata
from core.compute.models import ComputeService, Flavor, Instance, InstanceMetadata, ServerGroup
from core.compute.name_filter import name_matcher
from core.compute.quotas import check_ports, enforce_server
from core.compute.views import server_brief, server_detail

LOG = logging.getLogger(__name__)
NO_VALID_HOST = placement.NO_VALID_HOST  # Nova's fault text (also read from here)


# ---- create ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateRequest:
    """A create request's fields, checked for shape (not yet for existence)."""

    name: str
    image_ref: str
    flavor_ref: str
    metadata: dict[str, str]
    group_id: str | None
    networks: Any
    key_name: str | None
    user_data: str | None = None  # base64, as sent (create_fields.user_data)
    config_drive: bool = False
    security_groups: list[str] | None = None  # names or ids (server_secgroups.requested)


def parse_create(body: dict[str, Any]) -> CreateRequest:
    spec = field(body, "server", dict)
    create_fields.check_allowed(body)  # a field Haven does not honour is a 400
    name = field(body, "server.name", str).strip()
    if not name or len(name) > 255:
        raise BadRequest("Invalid input for field 'server.name': 1 to 255 characters.")
    image_ref = create_fields.boot_image(spec)
    flavor_ref = str(field(body, "server.flavorRef", (str, int))).rstrip("/").rsplit("/")[-1]
    if (field(body, "server.max_count", int, 1) != 1
            or field(body, "server.min_count", int, 1) != 1):
        raise BadRequest("Invalid input for field 'server.max_count': Haven creates one "
                         "server per request.")
    meta = check_metadata(spec.get("metadata", {}), "server.metadata")
    hints = body.get("os:scheduler_hints") or body.get("OS-SCH-HNT:scheduler_hints") or {}
    if not isinstance(hints, dict):
        raise BadRequest("Invalid input for field 'os:scheduler_hints': an object.")
    create_fields.check_placement_fields(spec)
    return CreateRequest(name=name, image_ref=image_ref, flavor_ref=flavor_ref, metadata=meta,
                         group_id=field(hints, "group", str, None),
                         networks=create_fields.networks(spec),
                         key_name=field(body, "server.key_name", str, None),
                         user_data=create_fields.user_data(spec),
                         config_drive=create_fields.config_drive(spec),
                         security_groups=server_secgroups.requested(spec))


def visible_flavor(sess: Session, flavor_ref: str) -> Flavor:
    flavor = sess.get(Flavor, flavor_ref)
    if flavor is None or flavor.deleted or not (
            flavor.is_public or policy.allowed(auth(), "compute:flavors:private")):
        raise BadRequest(f"Flavor {flavor_ref} could not be found.")
    return flavor


def check_group(sess: Session, group_id: str | None) -> None:
    if group_id is None:
        return
    group = sess.get(ServerGroup, group_id)
    if group is None or group.deleted or not policy.allowed(
            auth(), "compute:server_groups:read", {"project_id": group.project_id}):
        raise BadRequest(f"Invalid input for field 'os:scheduler_hints.group': "
                         f"server group {group_id} not found.")


def check_image_fits(image: dict[str, Any], flavor: Flavor) -> None:
    needed_gb = disk_needed_gb(image)
    if flavor.disk_gb and needed_gb > flavor.disk_gb:
        raise BadRequest(f"Flavor's disk is too small for requested image: flavor disk "
                         f"{flavor.disk_gb} GB, image needs {needed_gb} GB.")
    if int(image.get("min_ram") or 0) > flavor.ram_mb:
        raise BadRequest("Flavor's memory is too small for requested image.")


def insert_instance(sess: Session, req: CreateRequest, flavor: Flavor, image_id: str,
                    network_id: str | None, key_data: str | None = None) -> Instance:
    """Step 1 of a create: the caller's instance as BUILD/scheduling, with its metadata
    (and a copy of its key's public half, which outlives the key pair)."""
    ctx_auth = auth()
    ts = now()
    inst = Instance(
        name=req.name, project_id=ctx_auth.project_id, user_id=ctx_auth.user_id,
        flavor_id=flavor.id, vcpus=flavor.vcpus, memory_mb=flavor.ram_mb,
        root_gb=flavor.disk_gb, image_id=image_id, network_id=network_id,
        server_group_id=req.group_id, vm_state=states.BUILDING,
        task_state=states.SCHEDULING, power_state=states.NOSTATE, key_name=req.key_name,
        key_data=key_data, user_data=req.user_data, config_drive=req.config_drive,
        deleted=False, created_at=ts, updated_at=ts)
    sess.add(inst)
    sess.flush()
    for key, value in req.metadata.items():
        sess.add(InstanceMetadata(instance_id=inst.id, key=key, value=value))
    return inst


def build(ctx: ComputeContext, inst: Instance, network_id: str | None,
          port_id: str | None, security_groups: list[str] | None = None) -> None:
    """Steps 2 and 3 of a create, for an instance committed as BUILD/scheduling
    (``security_groups``: ids for its new port; None, the project's default)."""
    sess = session()
    token = auth().token
    if network_id is not None:
        try:
            ports.attach(ctx.clients, token, inst, network_id, port_id, security_groups)
        except Fault as fault:
            inst.vm_state, inst.task_state, inst.fault = states.ERROR, None, fault.message
            commit()
            raise
        commit()
    try:
        host = placement.schedule(ctx, inst.id)
    except Exception:
        # never leave a server in BUILD/scheduling with nothing left to move it on
        LOG.exception("scheduling %s failed", inst.id)
        placement.fail_scheduling(ctx, inst.id, "Scheduling failed; please retry.")
        ports.release(ctx.clients, inst)
        raise Fault("Scheduling failed; the server was put in ERROR. Please retry.",
                    503) from None
    sess.refresh(inst)
    if host is None:
        ports.release(ctx.clients, inst)
    else:
        nudge(ctx, inst)


def register(app: bottle.Bottle, ctx: ComputeContext) -> None:
    """The ``/servers`` routes, their metadata's and their actions'."""
    register_servers(app, ctx)
    server_metadata.register(app, ctx)
    server_actions.register(app, ctx)
    server_secgroups.register(app, ctx)


def register_servers(app: bottle.Bottle, ctx: ComputeContext) -> None:
    clients = ctx.clients
    network_names = ports.NetworkNames(clients)

    @app.post("/v2.1/servers")
    def create_server() -> dict[str, Any]:
        ctx_auth = auth()
        policy.enforce(ctx_auth, "compute:servers:create")
        body = json_body()
        req = parse_create(body)
        check_admin_keys(ctx_auth, {}, req.metadata)
        sess = session()
        flavor = visible_flavor(sess, req.flavor_ref)
        key = (keypairs.key_for_server(sess, str(ctx_auth.user_id), req.key_name)
               if req.key_name is not None else None)
        check_group(sess, req.group_id)
        image = resolve_image(clients, ctx_auth.token, req.image_ref)
        check_image_fits(image, flavor)
        network_id, port_id = ports.resolve_network(clients, ctx_auth.token, req.networks)
        server_secgroups.check_applicable(req.security_groups, network_id, port_id)
        group_ids = None if req.security_groups is None else server_secgroups.resolve(
            clients, ctx_auth.token, str(ctx_auth.project_id), req.security_groups)
        if network_id is not None and port_id is None:
            check_ports(clients, ctx_auth.token, ctx_auth.project_id)
        enforce_server(ctx.quotas, sess, ctx_auth.project_id, flavor.vcpus, flavor.ram_mb)
        inst = insert_instance(sess, req, flavor, str(image["id"]), network_id,
                               key.public_key if key is not None else None)
        commit()  # step 1 done: the server exists (BUILD) whatever happens next
        build(ctx, inst, network_id, port_id, group_ids)
        bottle.response.status = 202
        groups = [{"name": n} for n in req.security_groups or ["default"]]  # as asked (Nova)
        return {"server": {"id": inst.id, "links": server_brief(base_url(), inst)["links"],
                           "OS-DCF:diskConfig": "MANUAL", "security_groups": groups,
                           "adminPass": ""}}

    def list_query(collection: str) -> tuple[list[Instance], list[dict[str, Any]]]:
        q = bottle.request.query
        ctx_auth = auth()
        query = select(Instance).where(Instance.deleted.is_(False)).order_by(
            Instance.created_at.desc(), Instance.id)
        all_tenants = q.get("all_tenants", "").lower() not in ("", "0", "false")
        if all_tenants or "project_id" in q or "tenant_id" in q:
            policy.enforce(ctx_auth, "compute:servers:all_tenants")
            project = q.get("project_id") or q.get("tenant_id")
            if project:
                query = query.where(Instance.project_id == project)
        else:
            if ctx_auth.project_id is None:
                raise Forbidden("A project-scoped token is needed to list servers.")
            policy.enforce(ctx_auth, "compute:servers:read", {"project_id": ctx_auth.project_id})
            query = query.where(Instance.project_id == ctx_auth.project_id)
        name_filter = name_matcher(q["name"]) if "name" in q else None
        if "host" in q:
            policy.enforce(ctx_auth, "compute:servers:all_tenants")
            query = query.where(Instance.host == q["host"])
        if "image" in q:
            query = query.where(Instance.image_id == q["image"])
        if "flavor" in q:
            query = query.where(Instance.flavor_id == q["flavor"])
        rows = [i for i in session().scalars(query)
                if name_filter is None or name_filter(i.name)]
        if "status" in q:
            wanted = q["status"].upper()
            rows = [i for i in rows if states.api_status(i.vm_state, i.task_state) == wanted]
        limit = page_limit(q, ctx.cfg.api.max_limit)
        rows = list(after_marker(rows, [i.id for i in rows], q.get("marker")))[:limit]
        links = next_links(f"{base_url()}/v2.1/{collection}", {k: q[k] for k in q}, limit,
                           len(rows), rows[-1].id if rows else None)
        return rows, links

    def hosts_up() -> dict[str, bool] | None:
        """Each host's liveness, read once per request (admins see host_status)."""
        if not auth().is_admin:
            return None
        return {s.host: ctx.service_up(s.last_seen, s.forced_down)
                for s in session().scalars(select(ComputeService))}

    def detail(inst: Instance, up: dict[str, bool] | None,
               groups: dict[str, list[dict[str, str]]] | None = None) -> dict[str, Any]:
        host_up = None if up is None or not inst.host else up.get(inst.host, False)
        if groups is None:
            groups = server_secgroups.shown(clients, [inst])
        return server_detail(base_url(), inst, metadata_of(session(), inst.id),
                             network_names.name(inst.network_id), up is not None, host_up,
                             microversion(), groups.get(inst.id))

    @app.get("/v2.1/servers")
    def list_servers() -> dict[str, Any]:
        rows, links = list_query("servers")
        page: dict[str, Any] = {"servers": [server_brief(base_url(), i) for i in rows]}
        return {**page, "servers_links": links} if links else page

    @app.get("/v2.1/servers/detail")
    def list_servers_detail() -> dict[str, Any]:
        up = hosts_up()
        rows, links = list_query("servers/detail")
        groups = server_secgroups.shown(clients, rows)  # two network calls for the page
        page: dict[str, Any] = {"servers": [detail(i, up, groups) for i in rows]}
        return {**page, "servers_links": links} if links else page

    @app.get("/v2.1/servers/<instance_id>")
    def show_server(instance_id: str) -> dict[str, Any]:
        return {"server": detail(load_server(instance_id), hosts_up())}

    @app.put("/v2.1/servers/<instance_id>")
    def update_server(instance_id: str) -> dict[str, Any]:
        inst = load_server(instance_id, write=True)
        spec = field(json_body(), "server", dict)
        if "name" in spec:
            name = field(spec, "name", str).strip()
            if not name or len(name) > 255:
                raise BadRequest("Invalid input for field 'server.name': 1 to 255 characters.")
            inst.name = name
        inst.updated_at = now()
        return {"server": detail(inst, hosts_up())}

    @app.delete("/v2.1/servers/<instance_id>")
    def delete_server(instance_id: str) -> None:
        inst = load_server(instance_id, write=True)
        if inst.task_state == states.DELETING:
            bottle.response.status = 204
            return
        sess = session()
        if inst.host is None:
            # never placed: nothing runs anywhere, finish here
            transition(sess, inst, states.VM_STATES, states.TASK_STATES,
                       vm_state=states.DELETED, task_state=None, deleted=True,
                       deleted_at=now())
            commit()
            ports.release(clients, inst)
        else:
            transition(sess, inst, states.VM_STATES, states.TASK_STATES,
                       task_state=states.DELETING)
            commit()
            nudge(ctx, inst)
        bottle.response.status = 204

"""Server routes: create, list, show, delete, metadata, and actions.

Create is done in three committed steps, each safe to repeat:

1. validate everything the client sent (flavor here; image and network by
   asking those services with the client's own token, as Nova does) and
   insert the instance as BUILD/scheduling;
2. create its port (the network service hands out the fixed IP);
3. schedule: claim a host with a compare-and-swap (scheduler.py) and mark the
   instance spawning on it; then nudge that host's agent over the bus.

If no host fits, the instance goes to ERROR with Nova's "No valid host" fault
and its port is released; nothing is over-committed. The agent does the rest
and also finds the work on its own by reconciling the database, so a lost
nudge only delays the boot.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from functools import partial
from typing import Any

import bottle
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core.common import policy
from core.common.bus import BusError
from core.common.clients import ServiceCallError
from core.common.db import rowcount
from core.common.faults import BadRequest, Conflict, Fault, Forbidden, NotFound
from core.common.paging import after_marker, next_links, page_limit
from core.common.timeutil import now
from core.common.wsgi import auth, base_url, commit, field, json_body, session
from core.compute import messages, scheduler, states
from core.compute.api import ComputeContext
from core.compute.metadata_rules import check_admin_keys, check_count, check_metadata
from core.compute.models import ComputeService, Flavor, Instance, InstanceMetadata, ServerGroup
from core.compute.name_filter import name_matcher
from core.compute.quotas import check_ports, enforce_server
from core.compute.views import server_brief, server_detail

LOG = logging.getLogger(__name__)
UUID_RE = re.compile(r"^[0-9a-fA-F-]{32,36}$")
NO_VALID_HOST = "No valid host was found. There are not enough hosts available."
# Claims an instance may lose to other schedulers before it goes to ERROR. Each loss
# means another instance was placed, so this only bounds a pathological pile-up.
MAX_CLAIM_ATTEMPTS = 30
MAX_EVACUATE_BATCH = 1000  # servers in one POST /v2.1/os-hosts/<host>/evacuate


def load_server(instance_id: str, write: bool = False) -> Instance:
    inst = session().get(Instance, instance_id)
    target = {"project_id": inst.project_id} if inst else {}
    action = "compute:servers:write" if write else "compute:servers:read"
    if inst is None or inst.deleted or not policy.allowed(auth(), action, target):
        if inst is not None and not inst.deleted and write and policy.allowed(
                auth(), "compute:servers:read", target):
            raise Forbidden(f"Policy does not allow {action} on server {instance_id}.")
        raise NotFound(f"Instance {instance_id} could not be found.")
    return inst


def metadata_of(sess: Session, instance_id: str) -> dict[str, str]:
    return {m.key: m.value for m in sess.scalars(
        select(InstanceMetadata).where(InstanceMetadata.instance_id == instance_id))}


def nudge(ctx: ComputeContext, inst: Instance) -> None:
    """Tell the instance's host to look at it (:func:`core.compute.messages.nudge`)."""
    messages.nudge(ctx.bus, inst.host, inst.id)


def transition(sess: Session, inst: Instance, expect_vm: tuple[str, ...],
               expect_task: tuple[str | None, ...], **values: Any) -> None:
    """Compare-and-swap the instance's states; 409 if someone else moved it first."""
    query = update(Instance).where(Instance.id == inst.id, Instance.vm_state.in_(expect_vm))
    tasks = [t for t in expect_task if t is not None]
    if None in expect_task:
        query = query.where((Instance.task_state.in_(tasks)) | Instance.task_state.is_(None))
    else:
        query = query.where(Instance.task_state.in_(tasks))
    if rowcount(sess.execute(query.values(updated_at=now(), **values))) != 1:
        sess.refresh(inst)
        raise Conflict(f"Cannot perform this action on instance {inst.id} while it is in "
                       f"vm_state {inst.vm_state} and task_state {inst.task_state}.")
    sess.refresh(inst)


def no_valid_host(sess: Session, instance_id: str) -> None:
    """ERROR with Nova's fault, by CAS: only an instance still being scheduled."""
    sess.execute(update(Instance).where(Instance.id == instance_id,
                                        Instance.task_state == states.SCHEDULING)
                 .values(vm_state=states.ERROR, task_state=None, fault=NO_VALID_HOST,
                         updated_at=now()))


class InstanceMoved(Exception):
    """The instance left ``scheduling`` (deleted) while a host was being claimed."""


def lock_group(sess: Session, group_id: str) -> None:
    """Bump the server group's generation before placing a member: concurrent
    placements in one group then serialise on that row, so each sees the
    others' hosts (anti-affinity holds under races)."""
    for _ in range(50):
        group = sess.get(ServerGroup, group_id)
        if group is None:
            return
        sess.refresh(group)
        if scheduler.bump_group(sess, group.id, group.generation):
            return
    raise Conflict(f"Server group {group_id} is too busy; retry.")


def register(app: bottle.Bottle, ctx: ComputeContext) -> None:
    clients = ctx.clients

    def user_token() -> str:
        return auth().token

    def resolve_image(ref: str) -> dict[str, Any]:
        image_id = ref.rstrip("/").rsplit("/", 1)[-1]
        if not UUID_RE.match(image_id):
            raise BadRequest(f"Invalid imageRef provided: {ref}.")
        try:
            image = clients.request("GET", "image", f"/v2/images/{image_id}",
                                    token=user_token()).json()
        except ServiceCallError as exc:
            if exc.status == 404:
                raise BadRequest(f"Image {image_id} could not be found.") from None
            raise Fault(f"Image service error: {exc}", 503) from None
        if image.get("status") != "active":
            raise BadRequest(f"Image {image_id} is not active.")
        return dict(image)

    def resolve_network(networks: Any) -> tuple[str | None, str | None]:
        """(network id, pre-made port id) from the request's ``networks``."""
        if networks == "none":
            return None, None
        if networks in (None, "auto"):
            try:
                found = clients.request("GET", "network", "/v2.0/networks",
                                        token=user_token()).json()["networks"]
            except ServiceCallError as exc:
                raise Fault(f"Network service error: {exc}", 503) from None
            if len(found) == 1:
                return str(found[0]["id"]), None
            if not found:
                return None, None
            raise Conflict("Multiple possible networks found, use a Network ID to be more "
                           "specific.")
        if not isinstance(networks, list) or not all(isinstance(n, dict) for n in networks):
            raise BadRequest("Invalid input for field 'networks': expected 'auto', 'none' or "
                             "a list of objects.")
        if len(networks) != 1:
            raise BadRequest("Invalid input for field 'networks': Haven attaches exactly one "
                             "network per server.")
        spec = networks[0]
        if "port" in spec:
            port_id = field(spec, "port", str)
            try:
                port = clients.request("GET", "network", f"/v2.0/ports/{port_id}",
                                       token=user_token()).json()["port"]
            except ServiceCallError as exc:
                if exc.status == 404:
                    raise BadRequest(f"Port {port_id} could not be found.") from None
                raise Fault(f"Network service error: {exc}", 503) from None
            if port["device_id"]:
                raise Conflict(f"Port {port_id} is still in use.")
            return str(port["network_id"]), port_id
        net_id = field(spec, "uuid", str)
        try:
            clients.request("GET", "network", f"/v2.0/networks/{net_id}", token=user_token())
        except ServiceCallError as exc:
            if exc.status == 404:
                raise BadRequest(f"Network {net_id} could not be found.") from None
            raise Fault(f"Network service error: {exc}", 503) from None
        return net_id, None

    def attach_port(inst: Instance, network_id: str, port_id: str | None) -> None:
        body = {"device_id": inst.id, "device_owner": "compute:nova"}
        try:
            if port_id is None:
                port = clients.request("POST", "network", "/v2.0/ports", token=user_token(),
                                       json={"port": {"network_id": network_id, **body}}
                                       ).json()["port"]
            else:
                port = clients.request("PUT", "network", f"/v2.0/ports/{port_id}",
                                       token=user_token(), json={"port": body}).json()["port"]
        except ServiceCallError as exc:
            if exc.status == 409:
                raise Conflict(f"Cannot create a port for the server: {exc}") from None
            raise Fault(f"Network service error: {exc}", 503) from None
        inst.port_id = port["id"]
        inst.mac_address = port["mac_address"]
        if port["fixed_ips"]:
            inst.fixed_ip = port["fixed_ips"][0]["ip_address"]

    def release_port(inst: Instance) -> None:
        if inst.port_id:
            try:
                clients.request("DELETE", "network", f"/v2.0/ports/{inst.port_id}",
                                expect=(204, 404))
            except ServiceCallError as exc:
                LOG.warning("port %s of %s not released: %s", inst.port_id, inst.id, exc)

    def schedule(instance_id: str) -> str | None:
        """Claim a host for the instance; None (and the instance in ERROR) if none fits.

        One transaction per claim attempt. A lost claim (another scheduler took
        the host first) ends its transaction at once and the next attempt starts
        afresh: on InnoDB, an UPDATE that waited for the winner's row lock keeps
        that lock until its transaction ends even though it then matched
        nothing, so a scheduler that went on to the next host in the same
        transaction held locks on every host it lost, and three of them could
        deadlock each other (seen with three API processes on MariaDB).
        """
        down_time = ctx.cfg.compute.service_down_time

        def attempt(sess: Session, max_age: float) -> tuple[str, str | None]:
            """("placed"|"done", host), ("lost", host), ("stale", None) or ("none", None)."""
            inst = sess.get(Instance, instance_id)
            if inst is None or inst.task_state != states.SCHEDULING:
                return "done", inst.host if inst else None
            if inst.server_group_id:
                lock_group(sess, inst.server_group_id)
            avoid, only, _ = scheduler.group_constraints(sess, inst.server_group_id, inst.id)
            req = scheduler.Request(inst.vcpus, inst.memory_mb, inst.root_gb, avoid, only)
            index = ctx.host_index(sess, max_age)
            stats = scheduler.FilterStats()
            h = next(index.candidates(req, stats), None)
            if h is not None:
                if scheduler.claim(sess, inst, h, req):
                    # the instance row too moves by compare-and-swap: a delete that came
                    # in meanwhile wins, and this claim is rolled back with the transaction
                    moved = rowcount(sess.execute(
                        update(Instance).where(Instance.id == inst.id,
                                               Instance.task_state == states.SCHEDULING)
                        .values(host=h.host, claimed_host=h.host, scheduled_at=now(),
                                task_state=states.SPAWNING, updated_at=now())))
                    if moved != 1:
                        raise InstanceMoved(inst.id)
                    sess.expire(inst)
                    index.consume(h.host, req)
                    return "placed", h.host
                row = sess.scalars(
                    select(ComputeService).where(ComputeService.host == h.host)).first()
                if row is not None:
                    sess.refresh(row)
                    index.put(scheduler.host_state(row, down_time))
                else:  # the service was deleted: never offer it again
                    index.put(replace(h, enabled=False))
                return "lost", h.host
            if max_age > 0.0:
                return "stale", None  # the index may be old: decide again on a fresh one
            LOG.info("no valid host for %s: %s", inst.id, scheduler.describe(stats))
            no_valid_host(sess, inst.id)
            return "none", None

        max_age = 1.0
        for _ in range(MAX_CLAIM_ATTEMPTS):
            try:
                outcome, host = ctx.db.run_in_transaction(partial(attempt, max_age=max_age))
            except InstanceMoved:
                return None  # deleted while being placed: its claim was rolled back
            if outcome in ("placed", "done", "none"):
                return host
            # "lost": another scheduler made progress; the index knows that host's new state
            max_age = 0.0 if outcome == "stale" else 1.0

        def give_up(sess: Session) -> str | None:
            inst = sess.get(Instance, instance_id)
            if inst is None or inst.task_state != states.SCHEDULING:
                return inst.host if inst else None
            LOG.warning("no host for %s after %d lost claims", inst.id, MAX_CLAIM_ATTEMPTS)
            no_valid_host(sess, inst.id)
            return None

        return ctx.db.run_in_transaction(give_up)

    def fail_scheduling(instance_id: str, message: str) -> None:
        try:
            ctx.db.run_in_transaction(lambda sess: sess.execute(
                update(Instance).where(Instance.id == instance_id,
                                       Instance.task_state == states.SCHEDULING)
                .values(vm_state=states.ERROR, task_state=None, fault=message,
                        updated_at=now())))
        except Exception:  # the database is what failed: nothing more to do here
            LOG.exception("could not mark %s as failed", instance_id)

    @app.post("/v2.1/servers")
    def create_server() -> dict[str, Any]:
        policy.enforce(auth(), "compute:servers:create")
        body = json_body()
        spec = field(body, "server", dict)
        name = field(body, "server.name", str).strip()
        if not name or len(name) > 255:
            raise BadRequest("Invalid input for field 'server.name': 1 to 255 characters.")
        image_ref = field(body, "server.imageRef", str)
        flavor_ref = str(field(body, "server.flavorRef", (str, int))).rstrip("/").rsplit("/")[-1]
        if (field(body, "server.max_count", int, 1) != 1
                or field(body, "server.min_count", int, 1) != 1):
            raise BadRequest("Invalid input for field 'server.max_count': Haven creates one "
                             "server per request.")
        meta = check_metadata(spec.get("metadata", {}), "server.metadata")
        check_admin_keys(auth(), {}, meta)
        hints = body.get("os:scheduler_hints") or body.get("OS-SCH-HNT:scheduler_hints") or {}
        if not isinstance(hints, dict):
            raise BadRequest("Invalid input for field 'os:scheduler_hints': an object.")
        group_id = field(hints, "group", str, None)
        sess = session()
        flavor = sess.get(Flavor, flavor_ref)
        if flavor is None or flavor.deleted or not (
                flavor.is_public or policy.allowed(auth(), "compute:flavors:private")):
            raise BadRequest(f"Flavor {flavor_ref} could not be found.")
        if group_id is not None:
            group = sess.get(ServerGroup, group_id)
            if group is None or group.deleted or not policy.allowed(
                    auth(), "compute:server_groups:read", {"project_id": group.project_id}):
                raise BadRequest(f"Invalid input for field 'os:scheduler_hints.group': "
                                 f"server group {group_id} not found.")
        image = resolve_image(image_ref)
        needed_gb = max(int(image.get("min_disk") or 0),
                        -(-int(image.get("virtual_size") or 0) // (1 << 30)))
        if flavor.disk_gb and needed_gb > flavor.disk_gb:
            raise BadRequest(f"Flavor's disk is too small for requested image: flavor disk "
                             f"{flavor.disk_gb} GB, image needs {needed_gb} GB.")
        if int(image.get("min_ram") or 0) > flavor.ram_mb:
            raise BadRequest("Flavor's memory is too small for requested image.")
        network_id, port_id = resolve_network(spec.get("networks"))
        ts = now()
        ctx_auth = auth()
        if network_id is not None and port_id is None:
            check_ports(clients, user_token(), ctx_auth.project_id)
        enforce_server(ctx.quotas, sess, ctx_auth.project_id, flavor.vcpus, flavor.ram_mb)
        inst = Instance(
            name=name, project_id=ctx_auth.project_id, user_id=ctx_auth.user_id,
            flavor_id=flavor.id, vcpus=flavor.vcpus, memory_mb=flavor.ram_mb,
            root_gb=flavor.disk_gb, image_id=image["id"], network_id=network_id,
            server_group_id=group_id, vm_state=states.BUILDING, task_state=states.SCHEDULING,
            power_state=states.NOSTATE, key_name=field(body, "server.key_name", str, None),
            deleted=False, created_at=ts, updated_at=ts)
        sess.add(inst)
        sess.flush()
        for key, value in meta.items():
            sess.add(InstanceMetadata(instance_id=inst.id, key=key, value=value))
        commit()  # step 1 done: the server exists (BUILD) whatever happens next
        if network_id is not None:
            try:
                attach_port(inst, network_id, port_id)
            except Fault as fault:
                inst.vm_state, inst.task_state, inst.fault = states.ERROR, None, fault.message
                commit()
                raise
            commit()
        try:
            host = schedule(inst.id)
        except Exception:
            # never leave a server in BUILD/scheduling with nothing left to move it on
            LOG.exception("scheduling %s failed", inst.id)
            fail_scheduling(inst.id, "Scheduling failed; please retry.")
            release_port(inst)
            raise Fault("Scheduling failed; the server was put in ERROR. Please retry.",
                        503) from None
        sess.refresh(inst)
        if host is None:
            release_port(inst)
        else:
            nudge(ctx, inst)
        bottle.response.status = 202
        return {"server": {"id": inst.id, "links": server_brief(base_url(), inst)["links"],
                           "OS-DCF:diskConfig": "MANUAL", "security_groups": [
                               {"name": "default"}], "adminPass": ""}}

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

    network_names: dict[str, str] = {}

    def network_name(network_id: str | None) -> str | None:
        if network_id is None:
            return None
        if network_id not in network_names:
            try:
                net = clients.request("GET", "network", f"/v2.0/networks/{network_id}").json()
                network_names[network_id] = net["network"]["name"] or network_id
            except ServiceCallError:
                return network_id
        return network_names[network_id]

    def hosts_up() -> dict[str, bool] | None:
        """Each host's liveness, read once per request (admins see host_status)."""
        if not auth().is_admin:
            return None
        return {s.host: ctx.service_up(s.last_seen, s.forced_down)
                for s in session().scalars(select(ComputeService))}

    def detail(inst: Instance, up: dict[str, bool] | None) -> dict[str, Any]:
        host_up = None if up is None or not inst.host else up.get(inst.host, False)
        return server_detail(base_url(), inst, metadata_of(session(), inst.id),
                             network_name(inst.network_id), up is not None, host_up)

    @app.get("/v2.1/servers")
    def list_servers() -> dict[str, Any]:
        rows, links = list_query("servers")
        page: dict[str, Any] = {"servers": [server_brief(base_url(), i) for i in rows]}
        return {**page, "servers_links": links} if links else page

    @app.get("/v2.1/servers/detail")
    def list_servers_detail() -> dict[str, Any]:
        up = hosts_up()
        rows, links = list_query("servers/detail")
        page: dict[str, Any] = {"servers": [detail(i, up) for i in rows]}
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
            release_port(inst)
        else:
            transition(sess, inst, states.VM_STATES, states.TASK_STATES,
                       task_state=states.DELETING)
            commit()
            nudge(ctx, inst)
        bottle.response.status = 204

    # ---- metadata ------------------------------------------------------------
    @app.get("/v2.1/servers/<instance_id>/metadata")
    def get_metadata(instance_id: str) -> dict[str, Any]:
        return {"metadata": metadata_of(session(), load_server(instance_id).id)}

    def replace_metadata(instance_id: str, merge: bool) -> dict[str, Any]:
        inst = load_server(instance_id, write=True)
        meta = check_metadata(field(json_body(), "metadata", dict))
        sess = session()
        before = metadata_of(sess, inst.id)
        check_admin_keys(auth(), before, {**before, **meta} if merge else meta)
        if not merge:
            sess.execute(delete(InstanceMetadata).where(InstanceMetadata.instance_id == inst.id))
            sess.flush()
        for key, value in meta.items():
            sess.merge(InstanceMetadata(instance_id=inst.id, key=key, value=value))
        sess.flush()
        current = metadata_of(sess, inst.id)
        check_count(len(current))
        return {"metadata": current}

    app.route("/v2.1/servers/<instance_id>/metadata", "POST",
              lambda instance_id: replace_metadata(instance_id, merge=True))
    app.route("/v2.1/servers/<instance_id>/metadata", "PUT",
              lambda instance_id: replace_metadata(instance_id, merge=False))

    @app.get("/v2.1/servers/<instance_id>/metadata/<key>")
    def get_meta_item(instance_id: str, key: str) -> dict[str, Any]:
        meta = metadata_of(session(), load_server(instance_id).id)
        if key not in meta:
            raise NotFound(f"Metadata item {key} was not found.")
        return {"meta": {key: meta[key]}}

    @app.put("/v2.1/servers/<instance_id>/metadata/<key>")
    def set_meta_item(instance_id: str, key: str) -> dict[str, Any]:
        inst = load_server(instance_id, write=True)
        item = check_metadata(field(json_body(), "meta", dict), "meta")
        if list(item) != [key]:
            raise BadRequest("Request body and URI mismatch: 'meta' must hold exactly the "
                             "key in the URL.")
        before = metadata_of(session(), inst.id)
        check_admin_keys(auth(), before, {**before, **item})
        session().merge(InstanceMetadata(instance_id=inst.id, key=key, value=item[key]))
        session().flush()
        check_count(len(metadata_of(session(), inst.id)))
        return {"meta": item}

    @app.delete("/v2.1/servers/<instance_id>/metadata/<key>")
    def delete_meta_item(instance_id: str, key: str) -> None:
        inst = load_server(instance_id, write=True)
        row = session().get(InstanceMetadata, (inst.id, key))
        if row is None:
            raise NotFound(f"Metadata item {key} was not found.")
        check_admin_keys(auth(), {key: row.value}, {})
        session().delete(row)

    # ---- actions ---------------------------------------------------------------
    @app.post("/v2.1/servers/<instance_id>/action")
    def server_action(instance_id: str) -> Any:
        body = json_body()
        if len(body) != 1:
            raise BadRequest("An action body holds exactly one action.")
        action, args = next(iter(body.items()))
        handler = ACTIONS.get(action)
        if handler is None:
            raise BadRequest(f"There is no such action: {action}")
        return handler(instance_id, args if args is not None else {})

    def stop(instance_id: str, _args: Any) -> None:
        inst = load_server(instance_id, write=True)
        transition(session(), inst, (states.ACTIVE,), (None,), task_state=states.POWERING_OFF)
        commit()
        nudge(ctx, inst)
        bottle.response.status = 202

    def start(instance_id: str, _args: Any) -> None:
        inst = load_server(instance_id, write=True)
        transition(session(), inst, (states.STOPPED,), (None,), task_state=states.POWERING_ON)
        commit()
        nudge(ctx, inst)
        bottle.response.status = 202

    def reboot(instance_id: str, args: Any) -> None:
        if not isinstance(args, dict):
            raise BadRequest("Invalid input for field 'reboot': expected an object.")
        kind = field(args, "type", str)
        if kind.upper() not in ("SOFT", "HARD"):
            raise BadRequest("Invalid input for field 'reboot.type': SOFT or HARD.")
        inst = load_server(instance_id, write=True)
        task = states.REBOOTING if kind.upper() == "SOFT" else states.REBOOTING_HARD
        allowed_vm = (states.ACTIVE,) if task == states.REBOOTING else (states.ACTIVE,
                                                                         states.STOPPED,
                                                                         states.ERROR)
        transition(session(), inst, allowed_vm, (None, states.REBOOTING), task_state=task)
        commit()
        nudge(ctx, inst)
        bottle.response.status = 202

    def console_output(instance_id: str, args: Any) -> dict[str, Any]:
        inst = load_server(instance_id)
        length = field(args, "length", (int, str), None) if isinstance(args, dict) else None
        try:
            lines = int(length) if length is not None else None
        except ValueError:
            raise BadRequest("Invalid input for field 'length': an integer.") from None
        if inst.host is None or inst.vm_state == states.BUILDING:
            raise Conflict(f"Instance {instance_id} is not ready: no console yet.")
        try:
            reply = messages.console_log(ctx.bus, inst.host, inst.id, lines)
        except BusError as exc:
            raise Fault(f"Console of instance {instance_id} unavailable: {exc}", 503) from None
        return {"output": reply.output}

    def evacuate(instance_id: str, args: Any) -> dict[str, Any]:
        from core.compute.evacuate import evacuate_instance

        policy.enforce(auth(), "compute:evacuate")
        if not isinstance(args, dict):
            raise BadRequest("Invalid input for field 'evacuate': expected an object.")
        target = field(args, "host", str, None)
        inst = load_server(instance_id, write=True)
        evacuate_instance(ctx, session(), inst, target)
        commit()
        nudge(ctx, inst)
        bottle.response.status = 200
        return {"adminPass": ""}

    @app.post("/v2.1/os-hosts/<host>/evacuate")
    def evacuate_host_servers(host: str) -> dict[str, Any]:
        """Haven's extension: evacuate many servers of one dead host at once."""
        from core.compute.evacuate import evacuate_servers

        policy.enforce(auth(), "compute:evacuate")
        spec = field(json_body(), "evacuate", dict)
        ids = field(spec, "servers", list)
        if not ids or len(ids) > MAX_EVACUATE_BATCH or not all(
                isinstance(i, str) and i for i in ids) or len(set(ids)) != len(ids):
            raise BadRequest("Invalid input for field 'evacuate.servers': 1 to "
                             f"{MAX_EVACUATE_BATCH} distinct server IDs.")
        results, moved = evacuate_servers(ctx, session(), host, ids,
                                          lambda i: load_server(i, write=True))
        commit()
        for inst in moved:
            nudge(ctx, inst)
        return {"evacuations": results}

    def create_image(_instance_id: str, _args: Any) -> None:
        raise BadRequest("createImage is not supported yet by Haven.")

    ACTIONS = {
        "os-stop": stop, "os-start": start, "reboot": reboot,
        "os-getConsoleOutput": console_output, "evacuate": evacuate,
        "createImage": create_image,
    }

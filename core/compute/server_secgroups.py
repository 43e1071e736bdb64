"""A server's security groups: asked for at create, shown in its view, added and removed
by Nova's ``addSecurityGroup``/``removeSecurityGroup`` actions.

A server's groups are its port's groups: the network service holds them and
enforces them; compute keeps no copy (as Nova with Neutron). Every call goes to the
network API over HTTP (:class:`ServiceClients`), never to its code.

As Nova (``nova/network/neutron.py``, ``nova/network/security_group_api.py``):

* a requested group is a name or an id of a group of the server's project; a name
  wins over an id that happens to be equal to it; an unknown one is a 400 naming
  it, a name two groups share a 409 asking for an id;
* the server's port is created with the requested groups instead of the project's
  ``default`` (none requested: the network service gives it ``default``);
* the view's ``security_groups`` are the names of the port's groups (each once),
  and absent for a server without a port;
* ``addSecurityGroup``/``removeSecurityGroup`` rewrite the port's groups: 202, an
  unknown group or one the server does not have 404, a port that cannot carry
  groups (no port security, no address) 400;
* ``GET /servers/{id}/os-security-groups`` lists the groups of the server's ports
  in full, in Nova's format (:mod:`core.compute.secgroup_format`), read with the
  caller's token (a group the caller cannot see is left out, as in Nova).

Unlike Nova, groups asked for together with a pre-made port (``networks: [{"port":
...}]``) or with no port at all are a 400: Nova ignores them silently, and a
requested filter that is quietly not applied is the one thing a client cannot see.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import bottle

from core.common import policy
from core.common.clients import ServiceCallError, ServiceClients
from core.common.faults import BadRequest, Conflict, Fault, NotFound
from core.common.wsgi import auth, field
from core.compute import secgroup_format
from core.compute.api import ComputeContext
from core.compute.instances import load_server
from core.compute.models import Instance

LOG = logging.getLogger(__name__)
FIELD = "server.security_groups"
CHUNK = 100  # ids per list request (keeps each URL short)


def _unavailable(exc: ServiceCallError) -> Fault:
    return Fault(f"Network service error: {exc}", 503)


# ---- create --------------------------------------------------------------------------
def requested(spec: dict[str, Any]) -> list[str] | None:
    """The names (or ids) in the create request's ``security_groups``, each once, in
    order; None when absent or empty (the project's ``default`` applies)."""
    value = spec.get("security_groups")
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest(f"Invalid input for field '{FIELD}': a list of objects with a "
                         "'name'.")
    names: list[str] = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) != {"name"}:
            raise BadRequest(f"Invalid input for field '{FIELD}[{i}]': an object with only "
                             "a 'name'.")
        name = entry["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise BadRequest(f"Invalid input for field '{FIELD}[{i}].name': 1 to 255 "
                             "characters.")
        if name not in names:
            names.append(name)
    return names or None


def check_applicable(names: list[str] | None, network_id: str | None,
                     port_id: str | None) -> None:
    """400 when groups are asked for but no port of Haven's making would carry them."""
    if names is None:
        return
    if network_id is None:
        raise BadRequest(f"Invalid input for field '{FIELD}': the server has no network, "
                         "so no port to apply security groups to.")
    if port_id is not None:
        raise BadRequest(f"Invalid input for field '{FIELD}': security groups are not "
                         "applied to a given port; set them on the port instead.")


def _listed(clients: ServiceClients, token: str, project_id: str, key: str,
            values: Sequence[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for start in range(0, len(values), CHUNK):
        params = [("project_id", project_id), *((key, v) for v in values[start:start + CHUNK])]
        try:
            found += clients.request("GET", "network", "/v2.0/security-groups", token=token,
                                     params=params).json()["security_groups"]
        except ServiceCallError as exc:
            raise _unavailable(exc) from None
    return found


def resolve(clients: ServiceClients, token: str, project_id: str, names: Sequence[str],
            missing: Callable[[str], Fault] | None = None) -> list[str]:
    """The ids of ``names`` (names or ids of groups of ``project_id``), in order.

    A name matched by two groups is a 409; one matched by nothing is ``missing(name)``
    (by default Nova's 400)."""
    by_name = _listed(clients, token, project_id, "name", names)
    by_id = {str(g["id"]) for g in _listed(clients, token, project_id, "id", names)}
    ids: list[str] = []
    for name in names:
        matches = [str(g["id"]) for g in by_name if g["name"] == name]
        if len(matches) > 1:
            raise Conflict(f"Multiple security groups found matching '{name}'. Use an ID "
                           "to be more specific.")
        if matches:
            ids.append(matches[0])
        elif name in by_id:
            ids.append(name)
        elif missing is not None:
            raise missing(name)
        else:
            raise BadRequest(f"Security group {name} not found for project {project_id}.")
    return list(dict.fromkeys(ids))


# ---- the view ------------------------------------------------------------------------
def shown(clients: ServiceClients, instances: Sequence[Instance]
          ) -> dict[str, list[dict[str, str]]]:
    """Each instance's ``security_groups`` as Nova shows them (``[{"name": ...}]``, each
    name once), read as the service user; instances without a port are left out, and
    so is everything when the network service cannot answer (the view then omits the
    key rather than show groups that may not be the port's)."""
    port_of = {i.port_id: i.id for i in instances if i.port_id}
    if not port_of:
        return {}
    try:
        ports = _all(clients, "/v2.0/ports", "ports", list(port_of))
        group_ids = list(dict.fromkeys(g for p in ports for g in p["security_groups"]))
        names = {str(g["id"]): str(g["name"]) for g in _all(
            clients, "/v2.0/security-groups", "security_groups", group_ids)}
    except ServiceCallError as exc:
        LOG.warning("security groups of servers not shown: %s", exc)
        return {}
    out: dict[str, list[dict[str, str]]] = {}
    for port in ports:
        instance_id = port_of.get(str(port["id"]))
        if instance_id is None:
            continue
        view = out.setdefault(instance_id, [])
        for gid in port["security_groups"]:
            entry = {"name": names.get(gid, gid)}
            if entry not in view:
                view.append(entry)
    return out


def _all(clients: ServiceClients, path: str, key: str, ids: Sequence[str],
         token: str | None = None) -> list[dict[str, Any]]:
    """The ``ids`` of ``path`` that ``token`` (default: the service user) may see."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(ids), CHUNK):
        found += clients.request("GET", "network", path, token=token, params=[
            ("id", i) for i in ids[start:start + CHUNK]]).json()[key]
    return found


# ---- GET /servers/{id}/os-security-groups --------------------------------------------
def listed(clients: ServiceClients, token: str, inst: Instance) -> list[dict[str, Any]]:
    """The groups of ``inst``'s ports (found by device id, as Nova finds them), each
    once, in Nova's format, as far as ``token`` may see them; a server without a
    port has none."""
    groups_path = "/v2.0/security-groups"
    try:
        ports = clients.request("GET", "network", "/v2.0/ports", token=token,
                                params=[("device_id", inst.id)]).json()["ports"]
        ids = list(dict.fromkeys(str(g) for p in ports for g in p["security_groups"]))
        groups = _all(clients, groups_path, "security_groups", ids, token)
        others = sorted(secgroup_format.remote_ids(groups) - {str(g["id"]) for g in groups})
        remotes = _all(clients, groups_path, "security_groups", others, token)
    except ServiceCallError as exc:
        raise _unavailable(exc) from None
    return secgroup_format.groups_view(groups, {str(g["id"]): g for g in remotes})


def register(app: bottle.Bottle, ctx: ComputeContext) -> None:
    """Nova's ``os-security-groups`` sub-resource of a server (list only)."""

    @app.get("/v2.1/servers/<instance_id>/os-security-groups")
    def server_security_groups(instance_id: str) -> dict[str, Any]:
        inst = load_server(instance_id)
        caller = auth()
        policy.enforce(caller, "compute:servers:security_groups",
                       {"project_id": inst.project_id})
        return {"security_groups": listed(ctx.clients, caller.token, inst)}


# ---- addSecurityGroup / removeSecurityGroup ------------------------------------------
def _action_name(action: str, args: Any) -> str:
    if not isinstance(args, dict):
        raise BadRequest(f"Invalid input for field '{action}': expected an object.")
    name = field(args, "name", str)
    if not name.strip():
        raise BadRequest(f"Invalid input for field '{action}.name': Security group name "
                         "cannot be empty.")
    return name


def _port(clients: ServiceClients, token: str, inst: Instance) -> dict[str, Any]:
    no_port = NotFound(f"instance_id {inst.id} could not be found as device id on any "
                       "ports")
    if not inst.port_id:
        raise no_port
    try:
        return dict(clients.request("GET", "network", f"/v2.0/ports/{inst.port_id}",
                                    token=token).json()["port"])
    except ServiceCallError as exc:
        if exc.status == 404:
            raise no_port from None
        raise _unavailable(exc) from None


def _set_groups(clients: ServiceClients, token: str, port_id: str, ids: list[str]) -> None:
    try:
        clients.request("PUT", "network", f"/v2.0/ports/{port_id}", token=token,
                        json={"port": {"security_groups": ids}})
    except ServiceCallError as exc:
        if exc.status == 400:
            raise BadRequest("Network requires port_security_enabled and subnet associated "
                             "in order to apply security groups.") from None
        if exc.status == 404:
            raise NotFound(f"Port {port_id} or one of the security groups could not be "
                           "found.") from None
        raise _unavailable(exc) from None


def actions(clients: ServiceClients) -> dict[str, Callable[[str, Any], None]]:
    """The two server actions, for :mod:`core.compute.server_actions`."""

    def change(instance_id: str, action: str, args: Any, add: bool) -> None:
        name = _action_name(action, args)
        inst = load_server(instance_id, write=True)
        token = auth().token
        [group_id] = resolve(clients, token, inst.project_id, [name], missing=lambda n: (
            NotFound(f"Security group {n} is not found for project {inst.project_id}")))
        port = _port(clients, token, inst)
        groups = list(port["security_groups"])
        if add:
            if group_id in groups:
                bottle.response.status = 202
                return
            groups.append(group_id)
        else:
            if group_id not in groups:
                raise NotFound(f"Security group {name} not associated with the instance "
                               f"{inst.id}")
            groups.remove(group_id)
        _set_groups(clients, token, str(port["id"]), groups)
        bottle.response.status = 202

    return {
        "addSecurityGroup": lambda i, a: change(i, "addSecurityGroup", a, True),
        "removeSecurityGroup": lambda i, a: change(i, "removeSecurityGroup", a, False),
    }

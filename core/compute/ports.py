"""A server's port: what the compute API asks of the network service.

Compute never imports the network service's code (services talk over their APIs,
as Nova talks to Neutron): every call here goes through :class:`ServiceClients`,
with the caller's own token where the caller's rights are what count (looking up
a network or a port, creating the port in the caller's project) and the service
user's where Haven cleans up after itself.

What the network service answers is turned into the compute API's own faults:
a missing network or port is the client's error (400), a port in use or refused
by the network service a conflict (409), an unreachable network service 503.
"""

from __future__ import annotations

import logging
from typing import Any

from core.common.clients import ServiceCallError, ServiceClients
from core.common.faults import BadRequest, Conflict, Fault
from core.common.wsgi import field
from core.compute.models import Instance

LOG = logging.getLogger(__name__)
DEVICE_OWNER = "compute:nova"  # what Nova writes on its ports; Neutron's policies know it


def _unavailable(exc: ServiceCallError) -> Fault:
    return Fault(f"Network service error: {exc}", 503)


def resolve_network(clients: ServiceClients, token: str, networks: Any
                    ) -> tuple[str | None, str | None]:
    """(network id, pre-made port id) from a create request's ``networks``: ``none``,
    ``auto``/absent (the one network the caller sees, if exactly one), or one
    ``{"uuid": ...}`` or ``{"port": ...}``."""
    if networks == "none":
        return None, None
    if networks in (None, "auto"):
        try:
            found = clients.request("GET", "network", "/v2.0/networks",
                                    token=token).json()["networks"]
        except ServiceCallError as exc:
            raise _unavailable(exc) from None
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
                                   token=token).json()["port"]
        except ServiceCallError as exc:
            if exc.status == 404:
                raise BadRequest(f"Port {port_id} could not be found.") from None
            raise _unavailable(exc) from None
        if port["device_id"]:
            raise Conflict(f"Port {port_id} is still in use.")
        return str(port["network_id"]), port_id
    net_id = field(spec, "uuid", str)
    try:
        clients.request("GET", "network", f"/v2.0/networks/{net_id}", token=token)
    except ServiceCallError as exc:
        if exc.status == 404:
            raise BadRequest(f"Network {net_id} could not be found.") from None
        raise _unavailable(exc) from None
    return net_id, None


def attach(clients: ServiceClients, token: str, inst: Instance, network_id: str,
           port_id: str | None, security_groups: list[str] | None = None) -> None:
    """Create the instance's port on ``network_id`` (or bind the pre-made ``port_id``)
    and record its id, MAC and fixed IP on ``inst`` (the caller commits). A new port
    gets ``security_groups`` (ids) if given, else the network service's default."""
    body = {"device_id": inst.id, "device_owner": DEVICE_OWNER}
    groups = {} if security_groups is None else {"security_groups": security_groups}
    try:
        if port_id is None:
            port = clients.request("POST", "network", "/v2.0/ports", token=token,
                                   json={"port": {"network_id": network_id, **body,
                                                  **groups}}).json()["port"]
        else:
            port = clients.request("PUT", "network", f"/v2.0/ports/{port_id}",
                                   token=token, json={"port": body}).json()["port"]
    except ServiceCallError as exc:
        if exc.status == 409:
            raise Conflict(f"Cannot create a port for the server: {exc}") from None
        if exc.status == 400 and security_groups:
            raise BadRequest("Network requires port_security_enabled and subnet "
                             "associated in order to apply security groups.") from None
        raise _unavailable(exc) from None
    inst.port_id = port["id"]
    inst.mac_address = port["mac_address"]
    if port["fixed_ips"]:
        inst.fixed_ip = port["fixed_ips"][0]["ip_address"]


def delete(clients: ServiceClients, port_id: str) -> None:
    """Delete a port as the service user (gone already is fine); raises
    ServiceCallError, so a caller that must not lose the port retries later."""
    clients.request("DELETE", "network", f"/v2.0/ports/{port_id}", expect=(204, 404))


def release(clients: ServiceClients, inst: Instance) -> None:
    """Delete the instance's port, if any; a failure is only logged (the server is
    gone either way, and an operator can delete a leftover port)."""
    if inst.port_id:
        try:
            delete(clients, inst.port_id)
        except ServiceCallError as exc:
            LOG.warning("port %s of %s not released: %s", inst.port_id, inst.id, exc)


class NetworkNames:
    """Network names for server views, looked up once per network as the service user
    (a name that cannot be read shows as the network's id)."""

    def __init__(self, clients: ServiceClients) -> None:
        self.clients = clients
        self._names: dict[str, str] = {}

    def name(self, network_id: str | None) -> str | None:
        if network_id is None:
            return None
        if network_id not in self._names:
            try:
                net = self.clients.request("GET", "network",
                                           f"/v2.0/networks/{network_id}").json()
                self._names[network_id] = net["network"]["name"] or network_id
            except ServiceCallError:
                return network_id
        return self._names[network_id]

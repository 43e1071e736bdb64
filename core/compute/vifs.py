"""A guest's port on its hypervisor: binding it there, and waiting until it is plugged.

Nova's flow, on Haven's network API: the compute agent binds the instance's port to
its host (``binding:host_id``, an administrator's attribute, set with the service
user's token), defines the domain and starts it paused (libvirt makes the tap,
:func:`core.common.hostnet.tap_name`), then waits for the network agent of that
host to plug the tap into the network's bridge, load its filter and set the
port's ``status`` to ACTIVE. Only then does the guest run: a guest that ran
before its port was filtered could send before its security groups apply, and
one that booted unplugged asks DHCP into the void and gives up.

A port moved to another host (an evacuation's rebuild) is set DOWN in the same
request that moves its binding, so the ACTIVE left by the dead host's agent is
never taken for the new host's plugging; the port itself (MAC, fixed IP,
floating IP, security groups) is kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.common.clients import ServiceCallError, ServiceClients
from core.common.hostnet import tap_name
from core.compute.virt.libvirt import Nic

LOG = logging.getLogger(__name__)
ACTIVE = "ACTIVE"
DOWN = "DOWN"
POLL_INTERVAL = 0.5


class PlugTimeout(Exception):
    """The port was not ACTIVE on this host within the timeout."""


class Interrupted(Exception):
    """The agent is stopping: the wait is abandoned, the instance left to its next run."""


@dataclass(frozen=True)
class BoundPort:
    """What the domain needs of a port bound to this host."""

    id: str
    mac_address: str
    network_id: str
    mtu: int | None

    @property
    def nic(self) -> Nic:
        return Nic(tap=tap_name(self.id), mac_address=self.mac_address, mtu=self.mtu)


def get_port(clients: ServiceClients, port_id: str) -> dict[str, Any]:
    """The port as an administrator sees it (binding attributes included)."""
    return dict(clients.request("GET", "network", f"/v2.0/ports/{port_id}").json()["port"])


def network_mtu(clients: ServiceClients, network_id: str) -> int | None:
    net = clients.request("GET", "network", f"/v2.0/networks/{network_id}").json()["network"]
    mtu = net.get("mtu")
    return int(mtu) if isinstance(mtu, int) and mtu > 0 else None


def bind(clients: ServiceClients, port_id: str, host: str) -> BoundPort:
    """Bind ``port_id`` to ``host`` (a no-op when it is bound there already; moved and
    set DOWN when it was bound elsewhere); raises ServiceCallError."""
    port = get_port(clients, port_id)
    if port.get("binding:host_id") != host:
        previous = port.get("binding:host_id") or None
        port = dict(clients.request(
            "PUT", "network", f"/v2.0/ports/{port_id}",
            json={"port": {"binding:host_id": host, "status": DOWN}}).json()["port"])
        LOG.info("port %s bound to %s (was %s)", port_id, host, previous)
    return BoundPort(id=port_id, mac_address=str(port["mac_address"]),
                     network_id=str(port["network_id"]),
                     mtu=network_mtu(clients, str(port["network_id"])))


def unbind(clients: ServiceClients, port_id: str, host: str) -> None:
    """Clear the binding if it still names ``host`` (a port gone is fine)."""
    resp = clients.request("GET", "network", f"/v2.0/ports/{port_id}", expect=(200, 404))
    if resp.status_code == 404 or resp.json()["port"].get("binding:host_id") != host:
        return
    clients.request("PUT", "network", f"/v2.0/ports/{port_id}",
                    json={"port": {"binding:host_id": "", "status": DOWN}})


def plugged(port: dict[str, Any], host: str) -> bool:
    """Whether ``host``'s network agent reported the port plugged (ACTIVE, bound here)."""
    return port.get("status") == ACTIVE and port.get("binding:host_id") == host


def wait_plugged(clients: ServiceClients, port_id: str, host: str, timeout: float,
                 stop: threading.Event | None = None,
                 still_wanted: Callable[[], bool] = lambda: True) -> None:
    """Return once the port is ACTIVE and bound to ``host``; :class:`PlugTimeout` after
    ``timeout`` seconds. An unreachable network API is retried until then: a status
    that cannot be read is not ACTIVE (the guest stays paused). :class:`Interrupted`
    when ``stop`` is set or ``still_wanted`` says the build was superseded (the
    server deleted meanwhile: its delete should not wait for the timeout)."""
    deadline = time.monotonic() + timeout
    last_error: str | None = None
    while True:
        if not still_wanted():
            raise Interrupted(f"the build waiting for port {port_id} was superseded")
        try:
            if plugged(get_port(clients, port_id), host):
                return
            last_error = None
        except ServiceCallError as exc:
            last_error = str(exc)
        if time.monotonic() >= deadline:
            why = f" (last error: {last_error})" if last_error else ""
            raise PlugTimeout(f"port {port_id} was not plugged on {host} (status ACTIVE) "
                              f"within {timeout:g} s{why}")
        if stop is not None and stop.wait(POLL_INTERVAL):
            raise Interrupted(f"the agent stopped while port {port_id} was being plugged")
        if stop is None:
            time.sleep(POLL_INTERVAL)

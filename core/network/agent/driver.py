"""What a hypervisor's network agent asks of a data-path mechanism.

The agent reads the database's view of its host (:mod:`core.network.agent.desired`)
into a :class:`HostState` and hands it to a :class:`DataPathDriver`, whose
``sync`` makes the host match it: it adds what is missing and removes what is
stale, and running it again on a converged host changes nothing. So the agent
reconciles after a restart, a lost message or an evacuation the same way, by
calling ``sync`` again (Neutron's agents resync from the server the same way).

The state says *what* the host carries, never *how*: networks with their
segment and MTU, the local ports (the tap the hypervisor made for each), and the
ports of the same networks on other hypervisors with those hosts' tunnel
endpoints. The Linux bridge driver (:mod:`core.network.agent.linuxbridge`) makes a
bridge per network; the Open vSwitch driver (:mod:`core.network.agent.openvswitch`)
takes the same state and makes one integration bridge with a local VLAN tag per
network and a tunnel port per peer, so nothing here names a bridge or a device kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class NetworkSpec:
    """One network's segment as this host must carry it."""

    network_id: str
    network_type: str  # flat, vlan or vxlan
    physical_network: str | None  # flat and vlan
    segmentation_id: int | None  # vlan id or VNI
    mtu: int


@dataclass(frozen=True)
class LocalPort:
    """A port bound to this host: the hypervisor made ``device`` (its tap) for it.
    ``device_id`` is the instance's id for a guest's port ("" for the cloud's own)."""

    port_id: str
    network_id: str
    mac: str
    device: str
    device_id: str = ""


@dataclass(frozen=True)
class RemotePort:
    """A port of a tunnelled network bound to another host, reached at ``vtep``."""

    network_id: str
    mac: str
    vtep: str


@dataclass(frozen=True)
class HostState:
    """Everything one hypervisor's data path must be, from the database."""

    host: str
    networks: tuple[NetworkSpec, ...] = ()
    ports: tuple[LocalPort, ...] = ()
    remote_ports: tuple[RemotePort, ...] = ()

    def peers(self, network_id: str) -> frozenset[str]:
        """The tunnel endpoints that receive the network's flooded frames (broadcast,
        unknown unicast): every other host with a port on it. No multicast group."""
        return frozenset(p.vtep for p in self.remote_ports if p.network_id == network_id)


@dataclass(frozen=True)
class SyncResult:
    """What one ``sync`` did, for the agent's log (empty: the host had converged)."""

    commands: tuple[tuple[str, ...], ...] = field(default_factory=tuple)


class DataPathDriver(Protocol):
    """A data-path mechanism (Linux bridge or Open vSwitch: ``mechanism.build_driver``)."""

    def sync(self, desired: HostState) -> SyncResult:
        """Make the host carry exactly ``desired``: idempotent, removes stale state it
        owns (never a device it did not make, never the physical interfaces)."""
        ...

    def filter_bridge(self, port_id: str, network_id: str) -> str:
        """The Linux bridge a port's tap is a member of: the one whose netfilter hooks
        see every frame to and from the port, where its security groups run (the
        network's ``brq`` bridge, or the port's own ``qbr`` one on Open vSwitch)."""
        ...

    def plugged(self, desired: HostState) -> frozenset[str]:
        """The ids of ``desired``'s ports that the host has plugged: the tap in its
        filter bridge and that bridge joined to the network (what ACTIVE promises)."""
        ...


class DataPathError(Exception):
    """The host could not be read or changed (a command failed); the agent retries."""

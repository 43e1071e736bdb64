"""The network agent: one per hypervisor, converging its networking to the database.

What Neutron splits into a linuxbridge agent and a DHCP agent is one loop here,
:meth:`NetworkAgent.converge`, run every ``network.agent_interval`` seconds
(the database is the truth; nothing is remembered between rounds but files the
round itself reads back). One round, in this order:

1. the DHCP ports: one ``network:dhcp`` port per network this host has a guest
   port on, made (IPAM) or removed (:mod:`core.network.agent.hostdb`);
2. the security groups of this host's ports, compiled and loaded in one
   transaction (:mod:`core.network.agent.secgroup_apply`). If that fails, the
   round still runs but fails closed: no tap that is not already in its bridge is
   plugged, and every guest port here is set DOWN. Once loaded, the tracked
   connections of ports whose filter changed that it no longer admits are deleted
   (:mod:`core.network.agent.secgroup_conntrack`), so a removed rule also stops
   the connections it let in;
3. the service namespaces (veth, DHCP port's addresses, METADATA_ADDRESS/32);
4. the data path: VTEP registered, bridges, VXLAN devices, forwarding entries,
   taps plugged (the :class:`DataPathDriver`), but only the taps of ports the
   loaded ruleset covers (a port bound here after the ruleset was read waits for
   the next round) and the DHCP ports' (never filtered, as in Neutron);
5. dnsmasq per network, inside its service namespace; namespaces of networks no
   longer carried removed;
6. each guest port's ``status``: ACTIVE when the driver has plugged it (its tap in
   its filter bridge, joined to the network: ``DataPathDriver.plugged``) and this
   round's ruleset (which has its chains) is loaded; DOWN otherwise.
   Only ports bound to this host are written (compare on the binding).

The contract compute relies on (Nova's ``network-vif-plugged``): a guest port
bound to this host turns ACTIVE only after its tap is plugged into its bridge
and its security group filter is in the kernel. The filter runs on the Linux bridge
the driver names for the tap (``DataPathDriver.filter_bridge``): the network's bridge
with Linux bridges, the port's own ``qbr`` bridge with Open vSwitch (hybrid plugging,
:mod:`core.network.agent.hybrid`), so both mechanisms are filtered alike. See docs/architecture.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.common.db import Database
from core.common.hostnet import service_namespace
from core.network.agent.desired import desired_state, register_vtep
from core.network.agent.dhcp import DhcpNetwork
from core.network.agent.dhcp_supervisor import DnsmasqSupervisor
from core.network.agent.driver import DataPathDriver, HostState, LocalPort
from core.network.agent.hostdb import (
    cloud_ports,
    guests_not_in,
    secgroup_inputs,
    set_statuses,
    sync_service_ports,
)
from core.network.agent.secgroup_apply import ApplyError, NftApplier, in_namespace
from core.network.agent.secgroup_conntrack import ConntrackSweeper
from core.network.agent.secgroup_nft import CompileError, HostPorts
from core.network.agent.secgroup_source import host_ports
from core.network.agent.servicens import ServiceNamespaces, inner_name

LOG = logging.getLogger(__name__)



@dataclass
class RoundResult:
    """What one :meth:`NetworkAgent.converge` did (for logs and tests)."""

    filter_error: str | None = None
    statuses: dict[str, str] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    dhcp_refused: dict[str, str] = field(default_factory=dict)
    service_networks: list[str] = field(default_factory=list)
    conntrack_error: str | None = None  # the sweep failed (retried next round)
    connections_cut: int = 0


def zone_of(network_type: str, segmentation_id: int | None) -> int:
    """A conntrack zone per network, stable while the network exists: VLAN ids in
    1..4094, VNIs above them; 0 (the default zone) where that does not fit."""
    if segmentation_id is None:
        return 0
    if network_type == "vlan":
        return segmentation_id
    zone = 4096 + segmentation_id
    return zone if zone <= 0xFFFF else 0


def heartbeat_path(state_path: Path) -> Path:
    """The file the running agent touches after each complete round."""
    return state_path / "network-agent.heartbeat"


class NetworkAgent:
    """One hypervisor's network agent (see the module docstring).

    ``host_netns`` runs everything in a named network namespace instead of this
    process's own (how the tests make hypervisors); ``namespace_of`` names the
    service namespaces (tests give each fake hypervisor its own names).
    """

    def __init__(self, db: Database, host: str, vtep: str | None, driver: DataPathDriver,
                 state_dir: Path, *, host_netns: str | None = None,
                 namespace_of: Callable[[str], str] = service_namespace,
                 applier: NftApplier | None = None,
                 dhcp: DnsmasqSupervisor | None = None, log_dhcp: bool = False,
                 sweeper: ConntrackSweeper | None = None) -> None:
        self.db = db
        self.host = host
        self.vtep = vtep
        self.driver = driver
        if applier is None:
            applier = NftApplier(in_namespace(host_netns)) if host_netns else NftApplier()
        self.applier = applier
        if sweeper is None:
            sweeper = (ConntrackSweeper(in_namespace(host_netns)) if host_netns
                       else ConntrackSweeper())
        self.sweeper = sweeper
        self.dhcp = dhcp or DnsmasqSupervisor(state_dir / "dhcp",
                                              namespace_of=namespace_of, log_dhcp=log_dhcp)
        self.namespaces = ServiceNamespaces(state_dir / "netns", host_netns, namespace_of)
        self._stop = threading.Event()
        self._nudge = threading.Event()

    # ---- one round -------------------------------------------------------------------
    def converge(self) -> RoundResult:
        result = RoundResult()
        services = self.db.run_in_transaction(lambda s: sync_service_ports(s, self.host))
        if self.vtep is not None:
            self.db.run_in_transaction(lambda s: register_vtep(s, self.host, self.vtep or ""))
        desired = self.db.run_in_transaction(lambda s: desired_state(s, self.host))
        filtered = self._apply_filters(desired, result)

        for svc in services:
            self.namespaces.ensure(svc.network_id, svc.dhcp_port_id, svc.dhcp_mac,
                                   svc.addresses, svc.mtu)
        # the cloud's own devices bound here (the DHCP ports just synced, routers' legs)
        # are never filtered
        unfiltered = self.db.run_in_transaction(lambda s: cloud_ports(s, self.host))
        if result.filter_error is not None:
            desired = self._only_plugged(desired, unfiltered)
        else:  # a port bound here after the ruleset was read has no chains in it yet
            desired = _only(desired, filtered | unfiltered)
        self.driver.sync(desired)

        # Metadata is answered on every hypervisor, in the service namespace: every
        # subnet's guests get a route to it through the DHCP port (Neutron's
        # force_metadata), not through a router that may live on another node.
        dhcp_nets = [DhcpNetwork(s.network_id, inner_name(s.dhcp_port_id), server, s.mtu,
                                 s.subnets, s.ports, metadata_address=server,
                                 force_metadata=True)
                     for s in services if s.addresses and s.subnets
                     for server in [s.addresses[0].split("/")[0]]]
        dhcp = self.dhcp.sync(dhcp_nets)
        result.dhcp_refused = dict(dhcp.refused)
        wanted = {s.network_id for s in services}
        for network_id in sorted(self.namespaces.managed() - wanted):
            self.namespaces.remove(network_id)
        result.service_networks = sorted(wanted)

        plugged = self.driver.plugged(desired)
        for port in desired.ports:
            ok = port.port_id in plugged and (port.port_id in unfiltered or (
                result.filter_error is None and port.port_id in filtered))
            result.statuses[port.port_id] = "ACTIVE" if ok else "DOWN"
        carried = {p.port_id for p in desired.ports}
        unplugged = self.db.run_in_transaction(lambda s: guests_not_in(s, self.host, carried))
        for port_id in unplugged:
            result.statuses[port_id] = "DOWN"
        result.changed = self.db.run_in_transaction(
            lambda s: set_statuses(s, self.host, result.statuses))
        return result

    def _apply_filters(self, desired: HostState, result: RoundResult) -> set[str]:
        """Load the ruleset; the ids of the ports it covers (those it filters and those
        that need no filter: port security off). Empty on failure, with the reason."""
        zones = {n.network_id: zone_of(n.network_type, n.segmentation_id)
                 for n in desired.networks}
        try:
            local, groups, members = self.db.run_in_transaction(
                lambda s: secgroup_inputs(s, self.host))
            compiled = host_ports(local, groups, members,
                                  bridge=lambda p: self._filter_at(p, zones))
            if compiled.ports:
                self.applier.apply(compiled)
            else:
                self.applier.remove()
        except (ApplyError, CompileError, ValueError) as exc:
            LOG.error("host %s: security groups not loaded, failing closed: %s",
                      self.host, exc)
            result.filter_error = str(exc)
            return set()
        self._cut_connections(compiled, result)
        return {p["id"] for p in local}

    def _filter_at(self, port: Mapping[str, Any], zones: Mapping[str, int]
                   ) -> tuple[str, int]:
        """The port's filter bridge and its network's conntrack zone ("", 0: a port of
        a network this host does not carry)."""
        zone = zones.get(port["network_id"])
        if zone is None:
            return "", 0
        return self.driver.filter_bridge(port["id"], port["network_id"]), zone

    def _cut_connections(self, compiled: HostPorts, result: RoundResult) -> None:
        """After a ruleset is loaded: delete what it no longer admits (see
        :mod:`core.network.agent.secgroup_conntrack`); a failure is retried next round."""
        try:
            cut = self.sweeper.sweep_changed(compiled)
        except (ApplyError, ValueError) as exc:
            LOG.error("host %s: connections the security groups no longer admit not "
                      "cut (retried next round): %s", self.host, exc)
            result.conntrack_error = str(exc)
            return
        result.connections_cut = len(cut)
        if cut:
            LOG.info("host %s: %d connection(s) no longer admitted cut", self.host, len(cut))

    def _only_plugged(self, desired: HostState, unfiltered: set[str]) -> HostState:
        """The desired state without guest taps that are not plugged yet: a port whose
        filter is not loaded must not be connected (the DHCP ports, which are never
        filtered, are kept)."""
        plugged = self.driver.plugged(desired)
        keep: tuple[LocalPort, ...] = tuple(
            p for p in desired.ports if p.port_id in unfiltered or p.port_id in plugged)
        return HostState(desired.host, desired.networks, keep, desired.remote_ports)

    # ---- the loop --------------------------------------------------------------------
    def run(self, interval: float, heartbeat: Path | None = None) -> None:
        """Converge now and every ``interval`` seconds (sooner when nudged) until
        :meth:`stop`; a failed round is logged and retried. ``heartbeat`` is touched
        after each complete round (the OCF agent's deep monitor reads its age)."""
        while not self._stop.is_set():
            self._nudge.clear()
            try:
                result = self.converge()
                if result.changed:
                    LOG.info("host %s: port status %s", self.host,
                             {p: result.statuses[p] for p in result.changed})
                if heartbeat is not None:
                    heartbeat.touch()
            except Exception:  # a failed round must not end the loop
                LOG.exception("host %s: network agent round failed", self.host)
            self._nudge.wait(interval)

    def nudge(self) -> None:
        self._nudge.set()

    def stop(self) -> None:
        self._stop.set()
        self._nudge.set()


def _only(desired: HostState, port_ids: set[str]) -> HostState:
    """The desired state with only these ports' taps plugged."""
    return HostState(desired.host, desired.networks,
                     tuple(p for p in desired.ports if p.port_id in port_ids),
                     desired.remote_ports)

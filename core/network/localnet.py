"""The all-in-one's guest networking: the product's network agent and routers on one
machine, with an outside network that stays on that machine.

What a cluster spreads over its nodes runs here in the all-in-one's process, from
the same code:

* the network agent (:class:`~core.network.agent.agent.NetworkAgent`, Linux
  bridges): taps plugged, security groups, a service namespace per network with
  its dnsmasq (DHCP) and the metadata address, which the compute agent serves;
* the routers: :func:`core.network.routerns.shards.converge` of the one shard of
  one (every router), the convergence each ``haven-l3-N`` resource's monitor runs
  in a cluster, repeated every ``network.agent_interval`` seconds. It binds the
  routers' ports to this host, so the network agent carries their networks.

Both are nudged as in a cluster, on the all-in-one's local bus
(:mod:`core.common.bus.local`): the network API's :func:`nudger` sends to this
host's topic, which the agent consumes (:func:`~core.network.agent_nudges.consume`),
so a security group rule changes on a running guest at the round its nudge starts,
not an interval later. The nudger sends to no other host: nobody would read it.

The outside (the shared ``provider`` network, flat on physical network
:data:`~core.network.networks.PROVIDER_PHYSNET`) is local to the machine unless an
operator says otherwise::

    host namespace
    OUTSIDE_HOST (the provider subnet's gateway, e.g. 192.0.2.1/24)
        ==veth== OUTSIDE_PEER -- brq<provider> -- guests' taps, routers' qg- legs

The agent takes ``OUTSIDE_PEER`` as the provider network's physical interface
(``network.datapath.physical_interface_mappings``), exactly as a cluster node
takes its second cable. The host reaches floating IPs and provider guests over
that veth, and is the routers' next hop. Nothing is routed or NATed from there
onto the machine's real interfaces: the all-in-one adds no NAT, and an nftables
table (:data:`FORWARD_TABLE`) drops whatever the kernel would forward into or out
of the outside network (a machine that forwards for containers or libvirt would
otherwise pass guests' packets on, unNATed, to its real network).

An uplink is the operator's explicit choice: a ``physical_interface_mappings``
entry for the provider's physical network. Then that interface carries the
provider network (bridged into it as in a cluster), and none of the above is
made: no address on the host, no veth, no forward table.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.common.bus import Bus, Subscription
from core.common.config import DataPathConfig, HavenConfig
from core.common.db import Database
from core.network.agent.agent import NetworkAgent, heartbeat_path
from core.network.agent.iproute import LinuxBridgeDriver
from core.network.agent.linuxbridge import bridge_name, host_config
from core.network.agent_nudges import Nudger, consume
from core.network.models import Network, Subnet
from core.network.networks import PROVIDER_PHYSNET
from core.network.routerns import shards

LOG = logging.getLogger(__name__)

OUTSIDE_HOST = "haven-out"
"""The host's end of the outside veth: it holds the provider subnet's gateway."""
OUTSIDE_PEER = "haven-out-br"
"""The bridge's end: the provider network's physical interface in the all-in-one."""
FORWARD_TABLE = "haven_outside"
"""nftables table (inet) that keeps the outside network off the machine's others."""
LOOPBACK_VTEP = "127.0.0.1"
"""The VTEP of a machine without peers: its VXLAN networks never leave it."""


class OutsideError(RuntimeError):
    """The local outside network could not be made (a command failed)."""


@dataclass(frozen=True)
class Outside:
    """How the all-in-one reaches its provider network: ``uplink`` is the operator's
    interface (None: the local veth, the host at ``host_address``)."""

    uplink: str | None
    host_address: str | None  # CIDR notation, e.g. 192.0.2.1/24


def operator_uplink(cfg: DataPathConfig) -> str | None:
    """The interface the operator mapped to the provider's physical network, if any."""
    return host_config(cfg).physical_interfaces.get(PROVIDER_PHYSNET)


def datapath_config(cfg: DataPathConfig) -> DataPathConfig:
    """The all-in-one's data path: Linux bridges; the provider's physical network on
    the local veth unless the operator mapped it; a loopback VTEP unless one is set
    (a tenant network is VXLAN, and with no peer its device sends nothing)."""
    mappings = list(cfg.physical_interface_mappings)
    if operator_uplink(cfg) is None:
        mappings.append(f"{PROVIDER_PHYSNET}:{OUTSIDE_PEER}")
    return dataclasses.replace(cfg, mechanism="linuxbridge",
                               local_ip=cfg.local_ip or LOOPBACK_VTEP,
                               physical_interface_mappings=mappings)


def nudger(cfg: HavenConfig, bus: Bus) -> Nudger:
    """The all-in-one network API's nudger: on its local bus, to this host's agent
    only (a nudge for a host no agent here consumes would wait on the bus for ever)."""
    return Nudger(bus, reachable={cfg.compute_host})


def provider_gateway(db: Database, provider_name: str) -> str:
    """The provider subnet's gateway in CIDR notation (the host's outside address)."""
    def read(s: Session) -> tuple[str | None, str] | None:
        row = s.execute(select(Subnet.gateway_ip, Subnet.cidr).join(
            Network, Network.id == Subnet.network_id).where(
            Network.name == provider_name, Network.shared.is_(True))
            .order_by(Subnet.created_at)).first()
        return None if row is None else (row[0], row[1])

    row = db.run_in_transaction(read)
    if row is None or row[0] is None:
        raise OutsideError(f"network {provider_name!r} has no subnet with a gateway: "
                           "the host has no address to take on it")
    gateway, cidr = row
    return f"{gateway}/{ipaddress.ip_network(cidr).prefixlen}"


def _run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:  # no such tool, or it hung
        raise OutsideError(f"{' '.join(argv)}: {exc}") from exc


def _must(argv: Sequence[str], stdin: str | None = None) -> str:
    done = _run(argv, stdin)
    if done.returncode != 0:
        raise OutsideError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def forward_ruleset() -> str:
    """The nft script that drops forwarding into and out of the outside veth (one
    transaction, replacing the table)."""
    return (f"table inet {FORWARD_TABLE}\n"
            f"delete table inet {FORWARD_TABLE}\n"
            f"table inet {FORWARD_TABLE} {{\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter - 10; policy accept;\n"
            f'    iifname "{OUTSIDE_HOST}" counter drop\n'
            f'    oifname "{OUTSIDE_HOST}" counter drop\n'
            "  }\n"
            "}\n")


def ensure_local_outside(host_address: str) -> None:
    """Make (idempotently) the veth pair, the host's address on it, and the forward
    table; an address other than ``host_address`` on the host's end is removed."""
    if _run(["ip", "link", "show", "dev", OUTSIDE_HOST]).returncode != 0:
        _must(["ip", "link", "add", OUTSIDE_HOST, "type", "veth", "peer", "name",
               OUTSIDE_PEER])
    _must(["nft", "-f", "-"], stdin=forward_ruleset())
    # no IPv6 here: a link-local address would make the host a neighbour on the outside
    _run(["sysctl", "-q", "-w", f"net.ipv6.conf.{OUTSIDE_HOST}.disable_ipv6=1"])
    have = _must(["ip", "-o", "-4", "addr", "show", "dev", OUTSIDE_HOST]).split()
    present = {have[i + 1] for i, word in enumerate(have) if word == "inet"}
    for stale in present - {host_address}:
        _must(["ip", "addr", "del", stale, "dev", OUTSIDE_HOST])
    if host_address not in present:
        _must(["ip", "addr", "add", host_address, "dev", OUTSIDE_HOST])
    for dev in (OUTSIDE_PEER, OUTSIDE_HOST):
        _must(["ip", "link", "set", dev, "up"])


class LocalNetworking:
    """The network agent and the router loop of the all-in-one, each on a thread; the
    agent consumes its nudges on ``bus`` (the one :func:`nudger` sends on)."""

    def __init__(self, cfg: HavenConfig, db: Database, bus: Bus) -> None:
        self.cfg = cfg
        self.db = db
        self.bus = bus
        self._subscription: Subscription | None = None
        datapath = datapath_config(cfg.network.datapath)
        uplink = operator_uplink(cfg.network.datapath)
        self.outside = Outside(uplink, None if uplink else provider_gateway(
            db, cfg.network.provider_name))
        run_dir = Path(cfg.network.agent_run_dir)
        run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)  # dnsmasq must pass through
        self.agent = NetworkAgent(db, cfg.compute_host, datapath.local_ip,
                                  LinuxBridgeDriver(host_config(datapath)), run_dir)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.outside.host_address is not None:
            ensure_local_outside(self.outside.host_address)
        # before the loop: nudges sent meanwhile wait on the bus for it, none is lost
        self._subscription = consume(self.bus, self.agent)
        interval = self.cfg.network.agent_interval
        self._threads = [
            threading.Thread(target=self.agent.run, name="network-agent", daemon=True,
                             args=(interval, heartbeat_path(self.cfg.state_path))),
            threading.Thread(target=self._routers, name="routers", daemon=True,
                             args=(interval,)),
        ]
        for thread in self._threads:
            thread.start()

    def converge_routers(self) -> shards.Outcome:
        """Every router made here as the database says (the one shard of one)."""
        outcome = shards.converge(self.db, 0, 1, bridge_name, host=self.cfg.compute_host)
        for rid, why in sorted({**outcome.failed, **outcome.unplannable}.items()):
            LOG.error("router %s not made: %s", rid, why)
        for rid, why in sorted(outcome.waiting.items()):
            LOG.info("router %s waits for the network agent: %s", rid, why)
        return outcome

    def _routers(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                outcome = self.converge_routers()
                if outcome.bound:  # the agent carries their networks at its next round
                    self.agent.nudge()
            except Exception:  # a failed round must not end the loop
                LOG.exception("router round failed")
            self._stop.wait(interval)

    def stop(self) -> None:
        """Stop both loops; routers, namespaces and guests' data path stay (guests keep
        running after the all-in-one stops, and a restart converges them again)."""
        self._stop.set()
        if self._subscription is not None:
            self._subscription.stop()
            self._subscription = None
        self.agent.stop()
        for thread in self._threads:
            thread.join(timeout=30)

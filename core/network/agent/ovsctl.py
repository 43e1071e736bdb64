"""The Open vSwitch driver's hands and eyes: ``ovs-vsctl`` (JSON), ``ovs-ofctl``, ``ip``.

:class:`OvsCtl` reads br-int (``ovs-vsctl --format=json list``, ``ovs-ofctl --names
--no-stats dump-flows``) and the host's device names (``ip -j link show``, to plug a
tap only once the hypervisor made it) into the planner's :class:`Observed`, and runs
its commands. It talks to one Open vSwitch: the default one, or the one whose OVSDB
socket (``db``) and run directory (``rundir``: where ovs-vswitchd keeps the bridges'
OpenFlow sockets) are given, in the network namespace ``netns`` (how the tests run a
whole hypervisor, with its own ovsdb-server and ovs-vswitchd, in a namespace).
:class:`OpenVSwitchDriver` is the :class:`~core.network.agent.driver.DataPathDriver`;
it lays each port's tap into a Linux bridge of its own (``ip``, through
:class:`~core.network.agent.iproute.IpRoute2` in the same namespace) before br-int.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from core.network.agent import hybrid
from core.network.agent.driver import DataPathError, HostState, SyncResult
from core.network.agent.iproute import IpRoute2
from core.network.agent.openvswitch import (
    INTEGRATION_BRIDGE,
    NET_KEY,
    Command,
    Flow,
    Observed,
    OvsHostConfig,
    OvsPort,
    parse_flow,
    plan,
)

LOG = logging.getLogger(__name__)
ROUNDS = 3  # bridge and veths, then ports, then the flows that name them


def _value(cell: Any) -> Any:
    """An OVSDB JSON cell as Python: ``["set", []]`` None, ``["map", ...]`` a dict."""
    if isinstance(cell, list) and cell:
        kind = cell[0]
        if kind == "set":
            items = [_value(c) for c in cell[1]]
            return None if not items else items[0] if len(items) == 1 else items
        if kind == "map":
            return {str(k): str(_value(v)) for k, v in cell[1]}
        if kind == "uuid":
            return cell[1]
    return cell


def _rows(text: str) -> list[dict[str, Any]]:
    doc = json.loads(text)
    return [dict(zip(doc["headings"], (_value(c) for c in row), strict=True))
            for row in doc["data"]]


def _uuids(cell: Any) -> list[str]:
    if cell is None:
        return []
    return cell if isinstance(cell, list) else [cell]


class OvsCtl:
    """Runs ``ovs-vsctl``/``ovs-ofctl`` against one Open vSwitch, ``ip`` in ``netns``."""

    def __init__(self, db: str | None = None, rundir: str | None = None,
                 netns: str | None = None) -> None:
        self.db = db
        self.rundir = rundir
        self.netns = netns

    def _argv(self, command: Command) -> list[str]:
        program, *rest = command
        if program == "ovs-vsctl":
            return [program, "--timeout=60", *([f"--db={self.db}"] if self.db else []), *rest]
        if program == "ovs-ofctl":
            return [program, *rest]
        if program == "ip":
            return [program, *(["-n", self.netns] if self.netns else []), *rest]
        if program == "txcsum":  # in the switch's namespace, as ethtool would run
            return [*(["ip", "netns", "exec", self.netns] if self.netns else []),
                    sys.executable, "-m", "core.network.agent.txcsum", *rest]
        raise DataPathError(f"not an Open vSwitch command: {command}")

    def _run(self, command: Command) -> str:
        argv = self._argv(command)
        env = {**os.environ, **({"OVS_RUNDIR": self.rundir} if self.rundir else {})}
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            raise DataPathError(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def observe(self) -> Observed:
        bridges = {r["name"]: r for r in _rows(self._run((
            "ovs-vsctl", "--format=json", "--columns=name,datapath_type,fail_mode,ports",
            "list", "bridge")))}
        devices = frozenset(str(link["ifname"]) for link in json.loads(
            self._run(("ip", "-j", "link", "show")) or "[]"))
        bridge = bridges.get(INTEGRATION_BRIDGE)
        if bridge is None:
            return Observed(None, {}, frozenset(), devices)
        ifaces = {r["_uuid"]: r for r in _rows(self._run((
            "ovs-vsctl", "--format=json",
            "--columns=_uuid,name,type,options,mtu_request,ofport,external_ids", "list",
            "interface")))}
        ports: dict[str, OvsPort] = {}
        mine = set(_uuids(bridge["ports"]))
        for row in _rows(self._run((
                "ovs-vsctl", "--format=json", "--columns=_uuid,name,tag,external_ids,interfaces",
                "list", "port"))):
            if row["_uuid"] not in mine:
                continue
            iface = next((ifaces[u] for u in _uuids(row["interfaces"]) if u in ifaces), {})
            ports[row["name"]] = OvsPort(
                row["name"], row["tag"], iface.get("type") or "", iface.get("options") or {},
                iface.get("mtu_request"), row["external_ids"] or {},
                int(iface.get("ofport") or -1), iface.get("external_ids") or {})
        dump = self._run(("ovs-ofctl", "--names", "--no-stats", "dump-flows",
                          INTEGRATION_BRIDGE))
        flows: frozenset[Flow] = frozenset(parse_flow(line) for line in dump.splitlines()
                                           if " actions=" in line)
        return Observed({"datapath_type": bridge["datapath_type"] or "",
                         "fail_mode": bridge["fail_mode"] or ""}, ports, flows, devices)

    def run(self, command: Command) -> None:
        self._run(command)


class OpenVSwitchDriver:
    """The Open vSwitch mechanism with hybrid plugging (:mod:`core.network.agent.hybrid`):
    ``sync`` observes, plans and runs, again until nothing is left to do (at most
    :data:`ROUNDS` times: a fresh host needs the bridge before its ports and the ports'
    OpenFlow numbers before the flows that name them).

    One round: the ports' Linux bridges and veths are made first (br-int can only take
    a ``qvo`` that exists), then br-int is planned and changed, then stale bridges and
    veths are deleted (br-int has let go of their ``qvo`` by then). A failed command
    stops the run with :class:`DataPathError`; the next ``sync`` plans from the host
    as it then is.
    """

    def __init__(self, cfg: OvsHostConfig, ovs: OvsCtl | None = None,
                 ip: IpRoute2 | None = None) -> None:
        self.cfg = cfg
        self.ovs = ovs or OvsCtl()
        self.ip = ip or IpRoute2(self.ovs.netns)

    def _run(self, host: str, commands: Sequence[Command]) -> None:
        for command in commands:
            LOG.info("data path %s: %s", host, " ".join(command))
            if command[0] == "ip":
                self.ip.run(command)
            else:
                self.ovs.run(command)

    def _round(self, desired: HostState, run: bool) -> list[Command]:
        links = self.ip.observe().links
        linux = hybrid.plan(desired, links, self.cfg.datapath_type == "netdev")
        if run and linux.additions:
            self._run(desired.host, linux.additions)
            links = self.ip.observe().links
        switch = plan(hybrid.ovs_view(desired, links), self.ovs.observe(), self.cfg)
        if run:
            self._run(desired.host, switch)
            self._run(desired.host, linux.removals)
        return [*linux.additions, *switch, *linux.removals]

    def sync(self, desired: HostState) -> SyncResult:
        done: list[Command] = []
        for _ in range(ROUNDS):
            commands = self._round(desired, run=True)
            if not commands:
                return SyncResult(tuple(done))
            done += commands
        left = self._round(desired, run=False)
        if left:
            raise DataPathError(f"the data path of {desired.host} did not converge in "
                                f"{ROUNDS} rounds; still to do: {left}")
        return SyncResult(tuple(done))

    def filter_bridge(self, port_id: str, network_id: str) -> str:
        return hybrid.qbr_name(port_id)

    def plugged(self, desired: HostState) -> frozenset[str]:
        """Tap and ``qvb`` in the port's ``qbr``, its ``qvo`` open on br-int as a port of
        the port's network (tagged)."""
        links = self.ip.observe().links
        switch = self.ovs.observe().ports
        out = set()
        for port in desired.ports:
            qbr = hybrid.qbr_name(port.port_id)
            qvo = switch.get(hybrid.qvo_name(port.port_id))
            tap, qvb = links.get(port.device), links.get(hybrid.qvb_name(port.port_id))
            if (tap is not None and tap.master == qbr and qvb is not None
                    and qvb.master == qbr and qvo is not None and qvo.ofport > 0
                    and qvo.tag is not None
                    and qvo.external_ids.get(NET_KEY) == port.network_id):
                out.add(port.port_id)
        return frozenset(out)

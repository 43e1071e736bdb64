"""The Linux bridge driver's hands and eyes: iproute2 (``ip``/``bridge``, JSON output).

:class:`IpRoute2` reads the host (``ip -d -j link show``, ``bridge -j fdb show``)
into the planner's :class:`Observed` and runs its commands, optionally inside a
named network namespace (``-n NAME``: how the tests make whole hypervisors
without touching the machine's own namespace). :class:`LinuxBridgeDriver` is
the :class:`~core.network.agent.driver.DataPathDriver`: observe, plan, run.
"""

from __future__ import annotations

import json
import logging
import subprocess
from typing import Any

from core.network.agent.driver import DataPathError, HostState, SyncResult
from core.network.agent.linuxbridge import (
    VXLAN_PREFIX,
    Command,
    FdbEntry,
    HostConfig,
    Link,
    Observed,
    bridge_name,
    plan,
)

LOG = logging.getLogger(__name__)


def parse_links(data: list[dict[str, Any]]) -> dict[str, Link]:
    """``ip -d -j link show`` as Links by name."""
    out: dict[str, Link] = {}
    for item in data:
        info = item.get("linkinfo") or {}
        kind = info.get("info_kind")
        details = info.get("info_data") or {}
        vxlan = kind == "vxlan"
        out[item["ifname"]] = Link(
            name=item["ifname"], kind=kind, master=item.get("master"),
            mtu=int(item.get("mtu", 0)), up="UP" in item.get("flags", []),
            vni=details.get("id") if vxlan else None,
            local=details.get("local") if vxlan else None,
            port=details.get("port") if vxlan else None,
            learning=bool(details.get("learning")) if vxlan else None,
            vlan_id=details.get("id") if kind == "vlan" else None,
            parent=item.get("link"))
    return out


def parse_fdb(data: list[dict[str, Any]]) -> frozenset[FdbEntry]:
    """The VXLAN devices' entries with a remote destination (``bridge -j fdb show``);
    the bridges' own learned and local entries are not the planner's business."""
    return frozenset(
        FdbEntry(e["ifname"], e["mac"].lower(), e["dst"]) for e in data
        if e.get("dst") and str(e.get("ifname", "")).startswith(VXLAN_PREFIX)
        and "master" not in e)


class IpRoute2:
    """Runs ``ip`` and ``bridge``, in ``netns`` if given."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _argv(self, command: Command) -> list[str]:
        program, *rest = command
        if program not in ("ip", "bridge"):
            raise DataPathError(f"not an iproute2 command: {command}")
        return [program, *(["-n", self.netns] if self.netns else []), *rest]

    def _run(self, command: Command) -> str:
        argv = self._argv(command)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DataPathError(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def observe(self) -> Observed:
        links = parse_links(json.loads(self._run(("ip", "-d", "-j", "link", "show")) or "[]"))
        fdb = parse_fdb(json.loads(self._run(("bridge", "-j", "fdb", "show")) or "[]"))
        return Observed(links, fdb)

    def run(self, command: Command) -> None:
        self._run(command)


class LinuxBridgeDriver:
    """The Linux bridge mechanism: ``sync`` observes the host, plans, runs the plan.

    A command that fails stops the run with :class:`DataPathError`; what ran stays,
    and the next ``sync`` plans from the host as it then is (the plan is computed
    from what is observed, never from what was done before).
    """

    def __init__(self, cfg: HostConfig, ip: IpRoute2 | None = None) -> None:
        self.cfg = cfg
        self.ip = ip or IpRoute2()

    def sync(self, desired: HostState) -> SyncResult:
        commands = plan(desired, self.ip.observe(), self.cfg)
        for command in commands:
            LOG.info("data path %s: %s", desired.host, " ".join(command))
            self.ip.run(command)
        return SyncResult(tuple(commands))

    def filter_bridge(self, port_id: str, network_id: str) -> str:
        return bridge_name(network_id)

    def plugged(self, desired: HostState) -> frozenset[str]:
        links = self.ip.observe().links
        return frozenset(p.port_id for p in desired.ports
                         if (link := links.get(p.device)) is not None
                         and link.master == bridge_name(p.network_id))

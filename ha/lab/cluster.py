"""Corosync and Pacemaker inside lab nodes: start them, watch the cluster form,
and set up fencing through the lab's power switch.

Configuration text comes from ``ha.lab.config`` (pure); this module only runs
things inside nodes and waits, with bounds, on what crm_mon reports.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ha import crm
from ha.lab import config, node
from ha.lab.commands import LabError, wait_until
from ha.lab.state import LabState, NodeState

# Pacemaker's own log settings for a node without syslog: its file, in the node's
# private /var/log.
PCMK_ENV = {"PCMK_logfile": "/var/log/pacemaker/pacemaker.log", "PCMK_logfacility": "none"}


def corosync_ready(nd: NodeState) -> bool:
    result = node.exec_in(nd, ["corosync-cmapctl", "-g", "totem.cluster_name"],
                          check=False, timeout=10)
    return result.returncode == 0


def start_stack(lab_dir: Path, nd: NodeState, timeout: float = 30.0) -> None:
    """Start corosync, wait until it answers, then pacemakerd (which gives up at
    once if corosync is not there yet)."""
    node.spawn_in(lab_dir, nd, ["corosync"], "corosync.out")
    wait_until(lambda: corosync_ready(nd), timeout, f"corosync on {nd.name}")
    node.spawn_in(lab_dir, nd, ["pacemakerd"], "pacemakerd.out", PCMK_ENV)


def view(nd: NodeState, timeout: float = 15.0) -> crm.ClusterView | None:
    """The cluster as ``nd`` sees it, or None if it cannot say (yet)."""
    result = node.exec_in(nd, ["crm_mon", "-1", "--output-as=xml"], check=False,
                          timeout=timeout)
    if result.returncode != 0 or not result.stdout.strip():
        return None
    try:
        return crm.parse_crm_mon(result.stdout)
    except Exception:  # half-written output of a starting cluster: not formed yet
        return None


def formed(nd: NodeState, members: Sequence[str]) -> crm.ClusterView | None:
    """``nd``'s view if it shows exactly ``members`` online, a DC and quorum."""
    current = view(nd)
    if current and current.dc and current.quorum and current.online == sorted(members):
        return current
    return None


def wait_formed(nd: NodeState, members: Sequence[str], timeout: float) -> crm.ClusterView:
    return wait_until(lambda: formed(nd, members), timeout,
                      f"{', '.join(members)} online in {nd.name}'s view", interval=1.0)


def configure_fencing(lab_dir: Path, state: LabState, nd: NodeState,
                      timeout: float = 90.0) -> list[list[str]]:
    """Create one lab stonith device per node and enable fencing, from ``nd``.

    The commands are also written to ``cib-fencing.sh`` in the lab directory, for
    an operator to read (and rerun: pcs refuses duplicates, nothing changes).
    """
    plans = [config.NodePlan(n.name, n.nodeid, n.address, n.netns, n.veth)
             for n in state.nodes.values()]
    commands = config.pcs_fencing_commands(plans, state.socket_path, state.fence_action)
    (lab_dir / "cib-fencing.sh").write_text(config.script(commands))
    deadline = time.monotonic() + timeout
    for command in commands:
        node.exec_in(nd, command, timeout=max(5.0, deadline - time.monotonic()))
    return commands


def wait_resources(nd: NodeState, resources: Sequence[str], timeout: float) -> crm.ClusterView:
    """Wait until every resource in ``resources`` runs somewhere."""
    def check() -> crm.ClusterView | None:
        current = view(nd)
        if current and all(current.running_on(r) for r in resources):
            return current
        return None
    return wait_until(check, timeout, f"{', '.join(resources)} to start", interval=1.0)


def fence_history(nd: NodeState) -> list[crm.FenceEvent]:
    """Every fence the cluster remembers (--verbose, or stonith_admin shows one)."""
    result = node.exec_in(nd, ["stonith_admin", "--history", "*", "--verbose",
                               "--output-as=xml"], timeout=15)
    try:
        return crm.parse_fence_history(result.stdout)
    except Exception as exc:
        raise LabError(f"unreadable fence history from {nd.name}: {exc}") from None

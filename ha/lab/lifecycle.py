"""Building a lab (``up``), describing it (``status``) and tearing it down (``down``).

``up`` records each thing in the state file before it makes it, and ``down`` also
searches for what a crashed ``up`` may not have recorded (processes by their
argv, namespaces by the lab's prefix), so ``down`` is idempotent and leaves no
namespace, mount, process, veth or directory behind, whatever state it finds.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ha import crm
from ha.lab import cluster, config, libvirt, network, node, power, proc, state
from ha.lab.commands import LabError, run, wait_until

FENCE_AGENT_SOURCE = Path(__file__).resolve().parents[2] / "agents" / "fence" / config.FENCE_AGENT
TOOLS = ("ip", "unshare", "nsenter", "setsid", "mount", "corosync", "corosync-cmapctl",
         "pacemakerd", "pcs", "crm_mon", "stonith_admin")
LIBVIRT_TOOLS = ("libvirtd", "virtlogd", "virtlockd", "virsh")


class LabBusyError(Exception):
    """A lab is already up (or half torn down): only one at a time on a machine."""


class PreflightError(Exception):
    """The machine cannot run a lab as it is (not root, a tool missing)."""


@dataclass
class UpReport:
    nodes: list[str]
    seconds_to_boot: float  # power switch up -> every node's corosync + pacemakerd started
    seconds_to_form: float  # first node booting -> all online, a DC, quorum
    seconds_total: float
    fencing_script: str


def preflight(with_libvirt: bool) -> None:
    if os.geteuid() != 0:
        raise PreflightError("the lab needs root (namespaces, mounts, bridges)")
    missing = [t for t in TOOLS + (LIBVIRT_TOOLS if with_libvirt else ())
               if shutil.which(t, path=os.defpath + ":/usr/sbin:/sbin") is None]
    if missing:
        raise PreflightError(f"missing tools: {', '.join(missing)} (install pacemaker, corosync, "
                             "pcs" + (", libvirt-daemon-system" if with_libvirt else "") + ")")
    if not FENCE_AGENT_SOURCE.is_file():
        raise PreflightError(f"fence agent not found at {FENCE_AGENT_SOURCE}")


def busy_reason(lab_dir: Path) -> str | None:
    if state.load(lab_dir) is not None:
        return f"a lab is already up at {lab_dir}"
    if lab_dir.is_dir() and any(p.name != state.LOCK_FILE for p in lab_dir.iterdir()):
        return f"{lab_dir} holds the remains of a lab"
    if network.list_netns(config.PREFIX):
        return f"network namespaces {config.PREFIX}-* exist"
    return None


def up(lab_dir: Path, count: int, *, with_libvirt: bool = False, fence_action: str = "off",
       token_ms: int = config.DEFAULT_TOKEN_MS, subnet: str = config.DEFAULT_SUBNET,
       boot_delay: float = 20.0, timeout: float = 180.0,
       progress: Callable[[str], None] = lambda _msg: None,
       ) -> UpReport:
    """Build a lab of ``count`` nodes, wait until the cluster formed with fencing on.

    On any failure (or Ctrl-C) it tears down what it made, then re-raises.
    """
    preflight(with_libvirt)
    plans = config.plan_nodes(count, subnet)
    config.pcs_fencing_commands(plans, Path("/"), fence_action)  # validates the action
    with state.locked(lab_dir):
        reason = busy_reason(lab_dir)
        if reason:
            raise LabBusyError(f"{reason}: run `haven lab down` first")
        st = state.LabState(
            lab_dir=str(lab_dir), cluster_name=config.DEFAULT_CLUSTER, subnet=subnet,
            switch_ns=config.switch_netns(), bridge="br0", token_ms=token_ms,
            libvirt=with_libvirt, fence_action=fence_action,
            nodes={p.name: state.NodeState(p.name, p.nodeid, p.address, p.netns, p.veth)
                   for p in plans},
            boot_delay=boot_delay, created_run_netns=not network.RUN_NETNS.exists())
        state.save(st)
    try:
        return _build(lab_dir, plans, timeout, progress)
    except BaseException:
        progress("up failed: tearing down what was built")
        down(lab_dir)
        raise


def _build(lab_dir: Path, plans: list[config.NodePlan], timeout: float,
           progress: Callable[[str], None]) -> UpReport:
    t0 = time.monotonic()
    with state.updating(lab_dir) as st:
        node.ensure_mount_points(st.created_dirs)
    progress(f"network: {st.switch_ns} with {st.bridge}, {len(plans)} cables")
    network.create_switch(st.switch_ns, st.bridge)
    for p in plans:
        network.plug_node(st.switch_ns, st.bridge, p.netns, p.veth, p.address,
                          config.prefix_length(st.subnet))
    sbin = node.sbin_overlay(lab_dir)
    sbin.mkdir(exist_ok=True)
    shutil.copy2(FENCE_AGENT_SOURCE, sbin / config.FENCE_AGENT)
    conf = config.corosync_conf(st.cluster_name, plans, st.token_ms)
    hosts = config.hosts_file(plans)
    authkey = os.urandom(256)  # corosync-keygen's default size: 2048 bits
    cib = config.seed_cib(run(["cibadmin", "--empty"]).stdout, config.LAB_CIB_PROPERTIES)
    for p in plans:
        node.prepare(lab_dir, st.nodes[p.name], conf, hosts, authkey, cib)
        if st.libvirt:
            libvirt.configure(lab_dir, p.name)
    progress("power switch")
    pid, start = power.start_daemon(lab_dir)
    with state.updating(lab_dir) as st:
        st.power_pid, st.power_start = pid, start
    t_boot = time.monotonic()
    for p in plans:
        progress(f"power on {p.name}")
        power.boot(lab_dir, p.name)
    t_booted = time.monotonic()
    names = [p.name for p in plans]
    first = _reload(lab_dir).nodes[names[0]]
    progress(f"waiting for {', '.join(names)} to form a cluster")
    cluster.wait_formed(first, names, timeout)
    t_formed = time.monotonic()
    progress("fencing: one fence_haven_lab device per node")
    st = _reload(lab_dir)
    commands = cluster.configure_fencing(lab_dir, st, first)
    cluster.wait_resources(first, [f"fence-{n}" for n in names], timeout)
    with state.updating(lab_dir) as st:
        st.phase = "up"
    return UpReport(nodes=names, seconds_to_boot=t_booted - t_boot,
                    seconds_to_form=t_formed - t_boot, seconds_total=time.monotonic() - t0,
                    fencing_script=config.script(commands))


def _reload(lab_dir: Path) -> state.LabState:
    st = state.load(lab_dir)
    if st is None:
        raise state.NoLabError(f"no lab is up at {lab_dir}")
    return st


# ---- status -----------------------------------------------------------------------
@dataclass
class NodeStatus:
    name: str
    address: str
    power: str  # on, off, frozen
    link: str  # up, down, or "-" without a cable
    init_pid: int | None
    processes: int
    memory_mib: float


@dataclass
class LabStatus:
    lab_dir: str
    phase: str
    power_switch: bool
    nodes: list[NodeStatus] = field(default_factory=list)
    observer: str | None = None
    cluster: crm.ClusterView | None = None


def status(lab_dir: Path, with_cluster: bool = True) -> LabStatus:
    st = state.load(lab_dir)
    if st is None:
        raise state.NoLabError(f"no lab is up at {lab_dir} (start one: haven lab up)")
    result = LabStatus(lab_dir=str(lab_dir), phase=st.phase,
                       power_switch=proc.alive(st.power_pid, st.power_start))
    for nd in st.nodes.values():
        link = network.link_is_up(st.switch_ns, nd.veth)
        on = node.running(nd)
        result.nodes.append(NodeStatus(
            name=nd.name, address=nd.address,
            power=("frozen" if node.frozen(nd) else "on") if on else "off",
            link="-" if link is None else ("up" if link else "down"),
            init_pid=nd.init_pid if on else None, processes=len(node.pids(nd)),
            memory_mib=round(node.memory_kib(nd) / 1024, 1)))
    if with_cluster:
        # Ask a node that can answer for the cluster: crm_mon in a frozen node would
        # hang, and a cut-off node sees only its own partition.
        for ns in result.nodes:
            if ns.power == "on" and ns.link == "up":
                result.observer = ns.name
                result.cluster = cluster.view(st.nodes[ns.name], timeout=10)
                break
    return result


# ---- down -------------------------------------------------------------------------
@dataclass
class DownReport:
    killed: list[int] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    unmounted: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        st = proc.stat(pid)
        if st is None:
            break
        pid = st.ppid
    return pids


def lab_processes(lab_dir: Path) -> list[int]:
    """Host processes of this lab found by argv: power switch daemons and node inits
    (with their ip/unshare parents), recorded in the state or not."""
    mine = _ancestors()
    found = []
    for pid in proc.all_pids():
        argv = proc.cmdline(pid)
        if pid in mine or str(lab_dir) not in " ".join(argv):
            continue
        if power.MODULE in argv or node.INIT_MARKER in argv:
            found.append(pid)
    return found


def lab_mounts(lab_dir: Path, namespaces: list[str] | None = None,
               mountinfo: str | None = None) -> list[str]:
    """Host mount points under the lab directory, and those of ``namespaces`` (the
    network namespaces this ``down`` removes: never another lab's)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    points = proc.mount_points(mountinfo)
    netns = {str(network.RUN_NETNS / ns) for ns in namespaces or []}
    return [p for p in points
            if p == str(lab_dir) or p.startswith(str(lab_dir) + "/") or p in netns]


def _kill_all(pids: list[int], timeout: float) -> list[int]:
    targets = {pid: proc.start_time(pid) for pid in pids}
    killed = []
    for pid, start in targets.items():
        if proc.alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    wait_until(lambda: not any(proc.alive(p, s) for p, s in targets.items()), timeout,
               "the lab's processes to exit")
    return killed


def lab_namespaces(lab_dir: Path, st: state.LabState | None, force: bool) -> list[str]:
    """The network namespaces ``down`` removes.

    Those the state names (``up`` writes the state before it makes anything, so a
    partial ``up`` is covered); every ``hvl-*`` namespace only when the state is
    unreadable but the lab directory is there, or with ``force``. A ``down`` aimed
    at an empty directory must not tear down a lab that lives elsewhere.
    """
    existing = network.list_netns(config.PREFIX)
    if force or (st is None and lab_dir.is_dir()):
        return existing
    if st is None:
        return []
    known = {st.switch_ns, *(nd.netns for nd in st.nodes.values())}
    return [ns for ns in existing if ns in known]


def down(lab_dir: Path, timeout: float = 30.0, force: bool = False) -> DownReport:
    """Remove every namespace, mount, process, veth and directory of the lab.

    Idempotent, and works after a partial ``up``: processes are also found by
    their argv, mounts by their mount point (see ``lab_namespaces`` for names).
    """
    report = DownReport()
    try:
        st = state.load(lab_dir)
    except ValueError:  # a torn state file: fall back to searching
        st = None
    # The power switch first, so nothing powers a node back on meanwhile.
    switch = [p for p in lab_processes(lab_dir) if power.MODULE in proc.cmdline(p)]
    if st and proc.alive(st.power_pid, st.power_start) and st.power_pid:
        switch.append(st.power_pid)
    report.killed += _kill_all(sorted(set(switch)), timeout)
    # Nodes: SIGKILL to an init ends its PID namespace; then anything else still
    # living in a lab network namespace (ip/unshare parents, `ip netns exec` jobs).
    victims = set(lab_processes(lab_dir))
    for nd in (st.nodes.values() if st else []):
        if nd.init_pid and proc.alive(nd.init_pid, nd.init_start):
            victims.add(nd.init_pid)
    namespaces = lab_namespaces(lab_dir, st, force)
    for ns in namespaces:
        victims.update(network.netns_pids(ns))
    victims -= _ancestors()
    report.killed += _kill_all(sorted(victims), timeout)
    # Namespaces: nodes first, the switch last (a veth dies with either end).
    switch_ns = st.switch_ns if st else config.switch_netns()
    for ns in sorted(namespaces, key=lambda n: n == switch_ns):
        network.delete_netns(ns)
        report.namespaces.append(ns)
    # A boot the killed power switch had just forked may surface only now.
    for _ in range(3):
        late = [p for p in lab_processes(lab_dir) if p not in _ancestors()]
        if not late:
            break
        report.killed += _kill_all(late, timeout)
    for point in sorted(lab_mounts(lab_dir, namespaces), key=len, reverse=True):
        run(["umount", "-l", point], check=False)
        report.unmounted.append(point)
    if st and st.created_run_netns:
        _remove_run_netns(report)
    for created in reversed(st.created_dirs if st else []):
        path = Path(created)
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
            report.removed.append(created)
    if lab_dir.exists():
        if lab_mounts(lab_dir):
            raise LabError(f"mounts remain under {lab_dir}; not removing it")
        shutil.rmtree(lab_dir)
        report.removed.append(str(lab_dir))
    return report


def _remove_run_netns(report: DownReport) -> None:
    """ip(8) made /run/netns a mount point for the lab: undo that if it is empty."""
    if not network.RUN_NETNS.is_dir() or any(network.RUN_NETNS.iterdir()):
        return
    for _ in range(4):  # `ip netns add` may have stacked bind mounts on it
        if str(network.RUN_NETNS) not in proc.mount_points(
                Path("/proc/self/mountinfo").read_text()):
            break
        run(["umount", str(network.RUN_NETNS)], check=False)
        report.unmounted.append(str(network.RUN_NETNS))
    network.RUN_NETNS.rmdir()
    report.removed.append(str(network.RUN_NETNS))

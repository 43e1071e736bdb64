"""A lab node's own files and processes: its private directories, its init, and
running commands inside it.

A node is ``ip netns exec NODE unshare --mount --uts --ipc --pid --fork
--mount-proc INIT`` where INIT (``ha/lab/init.py``) mounts the node's private
copies of the host's cluster, libvirt, database and broker directories (kept in
the lab directory, ``nodes/NAME/root/...``). Commands go in with ``nsenter -t
INITPID -m -u -i -n -p``. Everything the node runs is in its init's PID
namespace, so SIGKILL to init ends the whole node at once: the power switch.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import stat as statmod
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ha.lab import config, proc
from ha.lab.commands import CLEAN_ENV, LabError, run, wait_until
from ha.lab.state import LabState, NodeState

INIT_SCRIPT = Path(__file__).with_name("init.py")
INIT_MARKER = str(INIT_SCRIPT)  # in the argv of init and of its unshare/ip parents


def node_dir(lab_dir: Path, name: str) -> Path:
    return lab_dir / "nodes" / name


def root_dir(lab_dir: Path, name: str) -> Path:
    """The node's private copies of host paths (``root/etc/corosync`` ...)."""
    return node_dir(lab_dir, name) / "root"


def sbin_overlay(lab_dir: Path) -> Path:
    """A directory overlaid on /usr/sbin inside every node (the lab's fence agent)."""
    return lab_dir / "sbin"


# ---- preparing a node's directories --------------------------------------------
def _copy_owner(src: Path, dst: Path) -> None:
    st = src.lstat()
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not statmod.S_ISLNK(st.st_mode):
        os.chmod(dst, statmod.S_IMODE(st.st_mode))


def copy_skeleton(src: Path, dst: Path) -> None:
    """Recreate ``src``'s directory tree under ``dst`` (owners and modes, no files):
    services find their log and state directories as on the host, without data."""
    dst.mkdir(parents=True, exist_ok=True)
    if not src.is_dir():
        return
    _copy_owner(src, dst)
    for current, dirs, _files in os.walk(src):
        for name in dirs:
            here = Path(current) / name
            if here.is_symlink():
                continue
            there = dst / here.relative_to(src)
            there.mkdir(exist_ok=True)
            _copy_owner(here, there)


def seed(mount: config.NodeMount, dst: Path) -> None:
    """Fill a node's private copy of ``mount.target`` as ``mount.seed`` says."""
    host = Path(mount.target)
    if mount.seed == "copy" and host.is_dir():
        dst.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", "--no-target-directory", str(host), str(dst)])
        for sub in mount.skeleton_only:
            if (dst / sub).is_dir():
                shutil.rmtree(dst / sub)
                copy_skeleton(host / sub, dst / sub)
    elif mount.seed == "skeleton":
        copy_skeleton(host, dst)
    else:
        dst.mkdir(parents=True, exist_ok=True)
        if host.is_dir():
            _copy_owner(host, dst)


def ensure_mount_points(created: list[str]) -> None:
    """Create host mount points the node mounts over but the host lacks (e.g.
    /var/lib/haven), recording them so ``down`` removes exactly those."""
    for mount in config.NODE_MOUNTS:
        target = Path(mount.target)
        if not target.exists():
            target.mkdir(parents=True)
            created.append(str(target))


def prepare(lab_dir: Path, node: NodeState, corosync_conf: str, hosts: str,
            authkey: bytes, cib: str) -> None:
    """Lay out a node's private directories (once, at ``up``; a power cycle keeps
    them, like a disk): configuration, corosync key, the seed CIB."""
    root = root_dir(lab_dir, node.name)
    for mount in config.NODE_MOUNTS:
        if mount.kind != "bind" or mount.target == "/etc/hosts":
            continue
        dst = config.node_source(root, mount.target)
        if not dst.exists():
            seed(mount, dst)
    hacluster = _ids("hacluster", "haclient")
    for sub in config.NODE_LOG_DIRS:
        path = root / "var/log" / sub
        path.mkdir(parents=True, exist_ok=True)
        if sub in ("pacemaker", "crmsh") and hacluster:
            os.chown(path, *hacluster)
            os.chmod(path, 0o2770 if sub == "pacemaker" else 0o775)
        mysql = _ids("mysql", "mysql")
        if sub == "mysql" and mysql:  # the galera agent writes its error log here as mysql
            os.chown(path, *mysql)
    hosts_path = config.node_source(root, "/etc/hosts")
    hosts_path.parent.mkdir(parents=True, exist_ok=True)
    hosts_path.write_text(hosts)
    corosync_dir = config.node_source(root, "/etc/corosync")
    (corosync_dir / "corosync.conf").write_text(corosync_conf)
    key = corosync_dir / "authkey"
    key.write_bytes(authkey)
    key.chmod(0o400)
    cib_dir = config.node_source(root, "/var/lib/pacemaker") / "cib"
    cib_dir.mkdir(parents=True, exist_ok=True)
    cib_path = cib_dir / "cib.xml"
    cib_path.write_text(cib)  # no cib.xml.sig: pacemaker-based accepts a CIB without one
    cib_path.chmod(0o600)
    if hacluster:
        os.chown(cib_dir, *hacluster)
        os.chown(cib_path, *hacluster)


def _ids(user: str, group: str) -> tuple[int, int] | None:
    try:
        return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def init_spec(lab_dir: Path, name: str) -> dict[str, object]:
    return {
        "hostname": name,
        "ready": str(node_dir(lab_dir, name) / "ready"),
        "mounts": config.init_mounts(root_dir(lab_dir, name), sbin_overlay(lab_dir)),
        "dirs": [[f"/run/{d}", "1777" if d == "lock" else "0755"]
                 for d in config.NODE_RUN_DIRS],
    }


# ---- init: starting, finding, killing ------------------------------------------
def init_argv(spec_path: Path) -> list[str]:
    # -I -S: no site-packages, no user paths: a small, predictable PID 1.
    return [sys.executable, "-I", "-S", INIT_MARKER, str(spec_path)]


def find_init(spec_path: Path) -> int | None:
    """The host PID of the init started with ``spec_path`` (its argv starts with the
    interpreter, unlike its ``ip``/``unshare`` parents, whose argv merely ends so)."""
    want = init_argv(spec_path)
    for pid in proc.all_pids():
        if proc.cmdline(pid) == want and proc.alive(pid, None):
            return pid
    return None


def start_init(lab_dir: Path, state: LabState, node: NodeState,
               timeout: float = 30.0) -> tuple[int, int]:
    """Start the node's init in its network namespace; return (pid, start time).

    ``setsid -f`` detaches the ``ip``/``unshare`` parents from this process, so no
    caller (the CLI, pytest, the power switch) is left with children to reap.
    """
    ndir = node_dir(lab_dir, node.name)
    spec_path = ndir / "init.json"
    spec_path.write_text(json.dumps(init_spec(lab_dir, node.name), indent=2))
    ready = ndir / "ready"
    ready.unlink(missing_ok=True)
    argv = ["setsid", "-f", "ip", "netns", "exec", node.netns, "unshare", "--mount", "--uts",
            "--ipc", "--pid", "--fork", "--mount-proc", *init_argv(spec_path)]
    with open(ndir / "init.log", "ab") as log:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True,
                       env=dict(CLEAN_ENV), cwd="/", timeout=timeout)
    answer = wait_until(lambda: ready.exists() and ready.read_text().strip(), timeout,
                        f"{node.name}'s init to set up its mounts")
    if answer != "ok":
        raise LabError(f"{node.name}: init failed: {answer}")
    pid = wait_until(lambda: find_init(spec_path), timeout, f"{node.name}'s init process")
    start = proc.start_time(pid)
    if start is None:
        raise LabError(f"{node.name}: init {pid} died at once (see {ndir / 'init.log'})")
    return pid, start


def kill_init(node: NodeState, timeout: float = 15.0) -> bool:
    """Power cut: SIGKILL the node's init from the host; the kernel then kills every
    process of its PID namespace. Returns whether the node was running."""
    pid, start = node.init_pid, node.init_start
    if not proc.alive(pid, start) or pid is None:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    wait_until(lambda: not proc.alive(pid, start), timeout, f"{node.name} to power off")
    return True


def running(node: NodeState) -> bool:
    return proc.alive(node.init_pid, node.init_start)


def pids(node: NodeState) -> list[int]:
    """Every process of the node (its init's PID namespace), or [] when off."""
    if not running(node) or node.init_pid is None:
        return []
    return proc.pids_in_namespace(node.init_pid, "pid")


def frozen(node: NodeState) -> bool:
    """A frozen node's init is stopped (SIGSTOP from the freeze fault)."""
    st = proc.stat(node.init_pid) if node.init_pid else None
    return bool(st and st.state in ("T", "t") and running(node))


def memory_kib(node: NodeState) -> int:
    """The node's memory: PSS summed over its processes."""
    return sum(proc.pss_kib(pid) for pid in pids(node))


# ---- running commands inside ---------------------------------------------------
def require_running(node: NodeState) -> int:
    if not running(node) or node.init_pid is None:
        raise LabError(f"{node.name} is powered off")
    return node.init_pid


def nsenter_argv(init_pid: int, argv: Sequence[str]) -> list[str]:
    """Enter all the node's namespaces; -w: its working directory (/), not ours."""
    return ["nsenter", "-t", str(init_pid), "-m", "-u", "-i", "-n", "-p", "-w", *argv]


def exec_in(node: NodeState, argv: Sequence[str], *, timeout: float = 30.0,
            check: bool = True, input_text: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """Run a command inside the node and wait for it (bounded)."""
    return run(nsenter_argv(require_running(node), argv), timeout=timeout, check=check,
               input_text=input_text)


def spawn_in(lab_dir: Path, node: NodeState, argv: Sequence[str], log_name: str,
             extra_env: dict[str, str] | None = None) -> None:
    """Start a daemon inside the node, detached (``setsid -f``) so that it is
    orphaned into the node's PID namespace and reaped by the node's init."""
    env = {**CLEAN_ENV, **(extra_env or {})}
    log_path = node_dir(lab_dir, node.name) / log_name
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
        log.flush()
        subprocess.run(nsenter_argv(require_running(node), ["setsid", "-f", *argv]),
                       stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                       check=True, timeout=30)

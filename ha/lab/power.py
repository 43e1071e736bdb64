"""The lab's power switch: what "off" and "on" mean for a node, and the host-side
daemon that does them for the fence agent.

A process inside one node cannot signal another node's init (separate PID
namespaces), so fencing needs something on the host, like a PDU: this daemon,
reached over a UNIX socket in the lab directory (which every node sees). The
fence agent ``fence_haven_lab`` sends it one JSON line, ``{"action": "off",
"node": "node2"}``, and gets one back, ``{"ok": true, "status": "off"}``.

- off: pull the node's cable (peers stop hearing it at once, as with a real power
  loss), then SIGKILL its init; answer once it is gone.
- on: the outlet is on at once; the node boots (init and its mounts, corosync,
  pacemakerd, libvirtd) no sooner than the lab's boot delay after it went off
  (see ``Switch``). Its disk, the node's private directories, is kept.
- jam / unjam (from the host only): a broken outlet. While a node's outlet is
  jammed every "off" of it fails (the agent reports the failure to Pacemaker,
  the node keeps running), which is how tests make a fence fail.

Run as ``python -m ha.lab.power --lab-dir DIR`` (``haven lab up`` starts it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ha.lab import cluster, config, libvirt, network, node, proc, state
from ha.lab.commands import CLEAN_ENV, LabError, wait_until

LOG = logging.getLogger("haven.lab.power")
ACTIONS = ("ping", "list", "status", "on", "off", "jam", "unjam")
MODULE = "ha.lab.power"  # in the daemon's argv: how down finds a stray daemon


# ---- the hardware: powering a node off and on ----------------------------------
def power_status(lab_dir: Path, name: str) -> str:
    nd = _load(lab_dir).node(name)
    return "on" if node.running(nd) else "off"


def power_off(lab_dir: Path, name: str) -> bool:
    """Cut the node's link, then its power. Idempotent; True if it was on."""
    st = _load(lab_dir)
    nd = st.node(name)
    if network.link_is_up(st.switch_ns, nd.veth):
        network.set_link(st.switch_ns, nd.veth, up=False)
    was_on = node.kill_init(nd)
    with state.updating(lab_dir) as fresh:
        current = fresh.node(name)
        if current.init_pid == nd.init_pid:  # nobody booted it meanwhile
            current.power, current.init_pid, current.init_start = "off", None, None
            if was_on or current.off_since is None:
                current.off_since = time.time()
    return was_on


def boot(lab_dir: Path, name: str) -> bool:
    """Power a node on: cable, init, corosync, pacemakerd (and libvirtd).

    Idempotent; True if it was off. It does not wait for the node to join the
    cluster: that is the cluster's business, and callers wait on crm_mon.
    """
    st = _load(lab_dir)
    nd = st.node(name)
    if node.running(nd):
        return False
    network.plug_node(st.switch_ns, st.bridge, nd.netns, nd.veth, nd.address,
                      config.prefix_length(st.subnet))
    pid, start = node.start_init(lab_dir, st, nd)
    with state.updating(lab_dir) as fresh:
        current = fresh.node(name)
        current.power, current.init_pid, current.init_start = "on", pid, start
        nd = current
    # libvirtd first: Pacemaker may start the compute agent as soon as it runs.
    if st.libvirt:
        libvirt.start(lab_dir, nd)
    cluster.start_stack(lab_dir, nd)
    return True


def _load(lab_dir: Path) -> state.LabState:
    st = state.load(lab_dir)
    if st is None:
        raise state.NoLabError(f"no lab is up at {lab_dir}")
    return st


# ---- the daemon ----------------------------------------------------------------
# A real server stays dark for a while after a power cycle (its firmware alone
# takes tens of seconds); a lab node could boot again in under a second. Pacemaker
# needs the former: the fencer reports a fence only once the target has left the
# corosync membership (token + consensus, ~7-12 s here under load), and a node
# that rejoins before that hears about its own fence and stops for good ("We were
# allegedly just fenced"). So "on" boots a node no sooner than the lab's
# boot_delay (default 20 s) after it went off; a node long off boots at once.
class Switch:
    """The power switch's logic: one request at a time per node.

    "on" answers at once (the outlet is on, status says "on") and boots the node in
    the background once it has been off for the boot delay; an "off" meanwhile
    cancels the boot, as pulling the plug would.
    """

    def __init__(self, lab_dir: Path,
                 off: Callable[[Path, str], bool] = power_off,
                 on: Callable[[Path, str], bool] = boot,
                 status: Callable[[Path, str], str] = power_status,
                 boot_delay: float | None = None) -> None:
        self.lab_dir = lab_dir
        self._off, self._on, self._status = off, on, status
        self._boot_delay = boot_delay  # None: the lab's own (state.boot_delay)
        self._locks: dict[str, threading.Lock] = {}
        self._posting: dict[str, threading.Event] = {}  # node -> cancels its boot
        self._jammed: set[str] = set()  # outlets that refuse "off" (see jam)
        self._guard = threading.Lock()

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def nodes(self) -> list[str]:
        return list(_load(self.lab_dir).nodes)

    def handle(self, request: dict[str, Any], requester: str) -> dict[str, Any]:
        action, name = request.get("action"), request.get("node")
        if action not in ACTIONS:
            return {"ok": False, "error": f"unknown action {action!r}"}
        if action == "ping":
            return {"ok": True, "pid": os.getpid()}
        try:
            if action == "list":
                return {"ok": True, "nodes": self.nodes()}
            if not isinstance(name, str) or name not in self.nodes():
                return {"ok": False, "error": f"no node {name!r} in the lab"}
            with self._lock(name):
                if action == "status":
                    return {"ok": True, "status": self._current(name)}
                LOG.info("%s %s (requested by %s)", action, name, requester)
                if action in ("jam", "unjam"):
                    return self._jam(name, action, requester)
                if action == "off" and name in self._jammed:
                    LOG.error("off %s failed: its outlet is jammed", name)
                    return {"ok": False, "error": f"the outlet of {name} is jammed"}
                changed = self._power_off(name) if action == "off" else self._power_on(name)
                return {"ok": True, "status": action, "changed": changed}
        except (LabError, LookupError, OSError) as exc:
            LOG.error("%s %s failed: %s", action, name, exc)
            return {"ok": False, "error": str(exc)}

    def _jam(self, name: str, action: str, requester: str) -> dict[str, Any]:
        """Break ("jam") or mend ("unjam") the node's outlet: a fault a test injects
        from the host, never something a node may ask for."""
        if not requester.endswith(" on host"):
            return {"ok": False, "error": f"{action} is for the host only"}
        jam = action == "jam"
        changed = (name in self._jammed) != jam
        if jam:
            self._jammed.add(name)
        else:
            self._jammed.discard(name)
        return {"ok": True, "jammed": jam, "changed": changed}

    def _current(self, name: str) -> str:
        return "on" if name in self._posting else self._status(self.lab_dir, name)

    def _power_off(self, name: str) -> bool:
        cancel = self._posting.pop(name, None)
        if cancel is not None:
            cancel.set()
        changed = self._off(self.lab_dir, name) or cancel is not None
        LOG.info("off %s done (%s)", name, "changed" if changed else "already off")
        return changed

    def _power_on(self, name: str) -> bool:
        if self._current(name) == "on":
            LOG.info("on %s: already on", name)
            return False
        st = _load(self.lab_dir)
        delay = self._boot_delay if self._boot_delay is not None else st.boot_delay
        off_since = st.node(name).off_since
        wait = max(0.0, off_since + delay - time.time()) if off_since else 0.0
        cancel = threading.Event()
        self._posting[name] = cancel
        threading.Thread(target=self._boot_later, args=(name, cancel, wait), daemon=True,
                         name=f"boot-{name}").start()
        LOG.info("on %s: outlet on, booting in %.1f s", name, wait)
        return True

    def _boot_later(self, name: str, cancel: threading.Event, wait: float) -> None:
        if cancel.wait(wait):
            return
        with self._lock(name):
            if cancel.is_set():
                return
            try:
                self._on(self.lab_dir, name)
                LOG.info("on %s: booted", name)
            except (LabError, LookupError, OSError) as exc:
                LOG.error("on %s: boot failed: %s", name, exc)
            finally:
                self._posting.pop(name, None)


def requester_of(conn: socket.socket, lab_dir: Path) -> str:
    """Who is asking: the peer's PID (SO_PEERCRED, as the host sees it) and the lab
    node it runs in, which the power log records next to every off and on."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid = struct.unpack("3i", creds)[0]
    st = state.load(lab_dir)
    where = "host"
    peer_ns = proc.ns_inode(pid, "pid")
    for nd in (st.nodes.values() if st else []):
        if nd.init_pid and peer_ns is not None and proc.ns_inode(nd.init_pid, "pid") == peer_ns:
            where = nd.name
    return f"pid {pid} on {where}"


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(4096)
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            reply: dict[str, Any] = {"ok": False, "error": "bad request: want one JSON object"}
        else:
            reply = self.server.switch.handle(request,
                                              requester_of(self.connection, self.server.lab_dir))
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, switch: Switch) -> None:
        self.switch, self.lab_dir = switch, switch.lab_dir
        super().__init__(str(path), _Handler)


def make_server(lab_dir: Path, switch: Switch | None = None) -> _Server:
    """The switch's server, bound to ``lab_dir/power.sock`` (mode 0600: root only,
    since this socket kills nodes)."""
    path = lab_dir / state.SOCKET_FILE
    path.unlink(missing_ok=True)
    old_umask = os.umask(0o077)
    try:
        return _Server(path, switch or Switch(lab_dir))
    finally:
        os.umask(old_umask)


def serve(lab_dir: Path, switch: Switch | None = None) -> None:
    """Serve on ``lab_dir/power.sock`` until SIGTERM."""
    path = lab_dir / state.SOCKET_FILE
    server = make_server(lab_dir, switch)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    LOG.info("power switch up on %s (pid %d)", path, os.getpid())
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        path.unlink(missing_ok=True)


# ---- the power log --------------------------------------------------------------
_REQUEST = re.compile(r" (on|off) (\S+) \(requested by pid (\d+) on (\S+)\)$")


@dataclass(frozen=True)
class PowerRequest:
    """One "on" or "off" the switch was asked for, and by whom (a node or the host)."""

    action: str
    node: str
    requester: str


def parse_power_log(text: str) -> list[PowerRequest]:
    """The requests recorded in power.log: how a test tells a fence (asked from a
    node, by its fencer) from an operator's ``haven lab kill`` (from the host)."""
    found = []
    for line in text.splitlines():
        match = _REQUEST.search(line)
        if match:
            found.append(PowerRequest(match.group(1), match.group(2), match.group(4)))
    return found


# ---- the client -----------------------------------------------------------------
def request(socket_path: Path, action: str, name: str | None = None,
            timeout: float = 120.0) -> dict[str, Any]:
    """One request to the power switch; raises LabError if it cannot be reached."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(json.dumps({"action": action, "node": name}).encode() + b"\n")
            data = sock.makefile("rb").readline()
    except OSError as exc:
        raise LabError(f"power switch at {socket_path}: {exc}") from None
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError:
        raise LabError(f"power switch at {socket_path}: no answer") from None
    return reply


def start_daemon(lab_dir: Path, timeout: float = 20.0) -> tuple[int, int]:
    """Start the daemon detached (``setsid -f``: no child of ours to reap) and wait
    until it answers; return its (pid, start time)."""
    with open(lab_dir / state.POWER_LOG, "ab") as log:
        subprocess.run(["setsid", "-f", sys.executable, "-m", MODULE, "--lab-dir", str(lab_dir)],
                       stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True,
                       env={**CLEAN_ENV, "PYTHONUNBUFFERED": "1"}, cwd="/", timeout=timeout)

    def answered() -> int | None:
        try:
            reply = request(lab_dir / state.SOCKET_FILE, "ping", timeout=2)
        except LabError:
            return None
        return int(reply["pid"]) if reply.get("ok") else None

    pid = wait_until(answered, timeout, "the power switch to answer")
    start = proc.start_time(pid)
    if start is None:
        raise LabError("the power switch died at once (see power.log)")
    return pid, start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                     description="the lab's power switch daemon")
    parser.add_argument("--lab-dir", type=Path, default=state.default_lab_dir())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    serve(args.lab_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

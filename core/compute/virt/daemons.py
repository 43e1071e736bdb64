"""Starting the local libvirt daemons the all-in-one needs (there is no init system).

The daemons start in this order: virtlockd (disk leases: libvirtd refuses to
start a guest without it), virtlogd (or domains fail to start), libvirtd. Each
is known by its own pid file in /run, never by its name: another libvirtd on
the machine (a lab node's, in its own namespaces) is not ours to restart. The
first connection after libvirtd starts takes several seconds (QEMU
capabilities probe); :func:`ensure_libvirtd` waits for a real connection,
bounded.

What the daemons are configured with is :mod:`core.compute.virt.hostconf`'s,
the same as on a cluster's hypervisors and in the lab.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import libvirt

from core.compute.virt.hostconf import LOCAL_LEASE_DIR, configure_libvirt, make_lease_dir
from core.compute.virt.qemuuser import ensure_kvm_access

LOG = logging.getLogger(__name__)
ETC_LIBVIRT = Path("/etc/libvirt")
RUN = Path("/run")
DAEMONS = ("virtlockd", "virtlogd", "libvirtd")  # in start order


class LibvirtUnavailable(Exception):
    """libvirtd could not be started or reached."""


def daemon_pid(name: str, run: Path = RUN) -> int | None:
    """The pid of this machine's ``name`` from its pid file, if that process lives."""
    try:
        pid = int((run / f"{name}.pid").read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == name[:15] else None


def _stop(name: str, pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if daemon_pid(name) is None:
            return
        time.sleep(0.1)
    raise LibvirtUnavailable(f"{name} (pid {pid}) did not stop for a restart")


def ensure_libvirtd(uri: str = "qemu:///system", leases: Path | None = None,
                    timeout: float = 90.0) -> list[str]:
    """Configure and start virtlockd, virtlogd and libvirtd unless they run; return
    what started. ``leases`` is the lockspace directory (hostconf.lease_dir).

    A libvirtd already running with an older configuration is restarted (its
    guests keep running: QEMU processes outlive a libvirtd restart).
    """
    started = []
    if uri.startswith("qemu:///system"):
        leases = leases or LOCAL_LEASE_DIR
        changed = configure_libvirt(ETC_LIBVIRT, leases)
        make_lease_dir(leases)
        if ensure_kvm_access():
            LOG.warning("/dev/kvm given to group kvm (0660), as udev does: libvirt "
                        "re-probes QEMU on every definition when its user cannot open it")
        pid = daemon_pid("libvirtd")
        if changed and pid is not None:
            LOG.warning("libvirt configuration changed: restarting libvirtd")
            _stop("libvirtd", pid)
        for daemon in DAEMONS:
            if daemon_pid(daemon) is None:
                LOG.info("starting %s", daemon)
                result = subprocess.run([daemon, "-d"], capture_output=True, text=True,
                                        check=False)
                if result.returncode != 0:
                    raise LibvirtUnavailable(f"{daemon} did not start: {result.stderr.strip()}")
                started.append(daemon)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            conn = libvirt.open(uri)
            conn.getCapabilities()  # the slow first probe happens here
            conn.close()
            return started
        except libvirt.libvirtError as exc:
            last = str(exc)
            time.sleep(0.5)
    raise LibvirtUnavailable(f"libvirt at {uri} not reachable after {timeout:.0f}s: {last}")

"""Starting the local libvirt daemons the all-in-one needs (there is no init system).

virtlogd must run before libvirtd, or domains fail to start. The first
connection after libvirtd starts takes several seconds (QEMU capabilities
probe); :func:`ensure_libvirtd` waits for a real connection, bounded.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import libvirt

LOG = logging.getLogger(__name__)
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
BEGIN, END = "# BEGIN haven-managed", "# END haven-managed"
# What Haven needs of libvirt's QEMU driver on its hypervisors, and why:
MANAGED_SETTINGS = """\
# QEMU runs as root: libvirt probes QEMU's capabilities as root, and if QEMU then
# runs as another user that cannot open /dev/kvm, libvirt judges its capability
# cache stale and re-probes (~40 s) on every domain definition.
user = "root"
group = "root"
# Instance disks may live on storage shared by several hypervisors: never chown them.
dynamic_ownership = 0
# No systemd/cgroup delegation, no private /dev per guest, no MAC labelling on Haven
# nodes (containers and lab namespaces have none of them).
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
"""


class LibvirtUnavailable(Exception):
    """libvirtd could not be started or reached."""


def _running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True, check=False).returncode == 0


def configure_qemu(path: Path = QEMU_CONF) -> bool:
    """Put Haven's block into qemu.conf (replacing an older one); True if it changed."""
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{MANAGED_SETTINGS}{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        new = head + block + tail
    else:
        new = text + ("\n" if text and not text.endswith("\n") else "") + block
    if new == text:
        return False
    tmp = path.with_suffix(".haven-tmp")
    tmp.write_text(new)
    tmp.replace(path)
    return True


def ensure_libvirtd(uri: str = "qemu:///system", timeout: float = 90.0) -> list[str]:
    """Configure and start virtlogd and libvirtd unless they run; return what started.

    A libvirtd already running with an older qemu.conf is restarted (its guests
    keep running: QEMU processes outlive a libvirtd restart).
    """
    started = []
    if uri.startswith("qemu:///system"):
        if configure_qemu() and _running("libvirtd"):
            LOG.warning("qemu.conf changed: restarting libvirtd")
            subprocess.run(["pkill", "-x", "libvirtd"], check=False)
            for _ in range(50):
                if not _running("libvirtd"):
                    break
                time.sleep(0.1)
        for daemon in ("virtlogd", "libvirtd"):
            if not _running(daemon):
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

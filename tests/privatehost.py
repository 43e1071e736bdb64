"""A hypervisor's libvirt daemons in namespaces of their own, for tests.

virtlockd, virtlogd and libvirtd run in a private mount namespace (and an empty
network namespace: guests have no NIC, and nothing may touch the host's
network) where /etc/libvirt is the node's configuration directory under test,
and /run, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are its own.
Several of them on one machine behave as separate hypervisors sharing whatever
directory the test gives them all (the shared instances directory). The machine's
own libvirtd, and other tests', are never touched.

Not the lab: no Pacemaker, no node init, only the daemons a hypervisor runs,
started in the order Haven's set-up starts them (virtlockd, virtlogd, libvirtd).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import libvirt

from core.compute.virt.qemuuser import ensure_kvm_access

DAEMONS = ("virtlockd", "virtlogd", "libvirtd")
MOUNTS = {"etc": "/etc/libvirt", "run": "/run", "lib": "/var/lib/libvirt",
          "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}


def seed_etc(target: Path) -> Path:
    """A copy of the machine's packaged /etc/libvirt (what a fresh node has), without
    any autostarted network (it would make a bridge)."""
    shutil.copytree("/etc/libvirt", target, symlinks=True,
                    ignore=shutil.ignore_patterns("autostart"))
    return target


def private_kvm(directory: Path) -> Path:
    """A /dev/kvm node of our own (same device), given to group kvm as udev does on a
    node; bound over /dev/kvm in a hypervisor's namespace, so the machine's stays as
    it is."""
    node = directory / "kvm"
    real = os.stat("/dev/kvm")
    os.mknod(node, 0o600 | stat.S_IFCHR, real.st_rdev)
    ensure_kvm_access(device=node)
    return node


class PrivateHypervisor:
    """libvirt daemons configured from ``etc_libvirt``, their state under ``root``;
    ``binds`` are extra (source, target) bind mounts their namespace sees."""

    def __init__(self, root: Path, etc_libvirt: Path, timeout: float = 120,
                 binds: tuple[tuple[Path, Path], ...] = ()) -> None:
        self.root = root
        self.etc = etc_libvirt
        for name in ("run", "lib", "cache", "log"):
            (root / name).mkdir(parents=True, exist_ok=True)
        (root / "log" / "qemu").mkdir(exist_ok=True)
        (root / "lib" / "qemu").mkdir(exist_ok=True)
        shutil.chown(root / "lib" / "qemu", "libvirt-qemu", "libvirt-qemu")
        mounts = [("etc", etc_libvirt)] + [(n, root / n) for n in ("run", "lib", "cache", "log")]
        if Path("/dev/kvm").exists():
            binds = ((private_kvm(root), Path("/dev/kvm")), *binds)
        script = "".join(f"mount --bind {src} {MOUNTS[name]} && " for name, src in mounts)
        script += "".join(f"mount --bind {src} {target} && " for src, target in binds)
        script += " && ".join(f"{d} -d" for d in DAEMONS)
        # Each daemon forks into the background and stays in these namespaces after
        # the shell that started it exits; their pid files are in our private /run.
        subprocess.run(["unshare", "--mount", "--net", "--propagation", "private",
                        "sh", "-c", script], check=True, timeout=60,
                       capture_output=True)
        self.uri = f"qemu:///system?socket={root / 'run' / 'libvirt' / 'libvirt-sock'}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = libvirt.open(self.uri)
                conn.getCapabilities()
                conn.close()
                break
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.5)

    def pid(self, daemon: str) -> int | None:
        try:
            return int((self.root / "run" / f"{daemon}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def connect(self) -> libvirt.virConnect:
        return libvirt.open(self.uri)

    def stop(self) -> None:
        """Destroy its guests, then stop its daemons (ours: known by our pid files)."""
        try:
            conn = libvirt.open(self.uri)
            for dom in conn.listAllDomains():
                if dom.isActive():
                    dom.destroy()
            conn.close()
        except libvirt.libvirtError:
            pass
        for daemon in reversed(DAEMONS):
            pid = self.pid(daemon)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)

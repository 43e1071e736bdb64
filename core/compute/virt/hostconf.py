"""libvirt's configuration on every hypervisor Haven sets up: one function renders it.

The all-in-one (:mod:`core.compute.virt.daemons`), ``haven cluster node-config``
(a cluster's hypervisors) and the lab's nodes all write these two files with
:func:`configure_libvirt`, so what a real node runs is what the tests run.

* ``qemu.conf``: QEMU as the unprivileged ``libvirt-qemu`` user under seccomp,
  no chown of disks by libvirt (Haven gives each file to that user itself, also
  on shared storage), and disk leases through virtlockd.
* ``qemu-lockd.conf``: a lease on every writable disk, required, kept in a
  lockspace directory on the shared instances directory. Two hypervisors that
  share the instances directory share the lease files, so a second QEMU on a disk
  that another host's QEMU holds is refused, even if every other guard failed.
  A dead host's leases die with its virtlockd (POSIX locks).

virtlockd must run before libvirtd starts a guest (libvirtd connects to its
socket), and libvirtd must be restarted to read a changed file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from core.common.config import HavenConfig

QEMU_USER = "libvirt-qemu"  # Debian's QEMU user; fixed uid 64055 on every Debian host
QEMU_GROUP = "libvirt-qemu"  # only that user is in it
LEASES_DIRNAME = ".leases"
# Leases of disks on a hypervisor's own disk (no instances_dir configured): libvirt's
# usual place. One place for the whole machine, whichever Haven cloud uses its libvirtd.
LOCAL_LEASE_DIR = Path("/var/lib/libvirt/lockd/files")
BEGIN, END = "# BEGIN haven-managed", "# END haven-managed"


def leases_of(cfg: HavenConfig) -> Path:
    """The lease directory of a node with Haven config ``cfg``."""
    return lease_dir(cfg.instances_path if cfg.compute.instances_dir else None)


def lease_dir(instances_dir: Path | None) -> Path:
    """Where the disk leases live: beside the instances on a configured (shared)
    instances directory, so every hypervisor sharing it sees them; the machine's own
    lease directory when instances stay in the state directory (not shared)."""
    return instances_dir / LEASES_DIRNAME if instances_dir is not None else LOCAL_LEASE_DIR


def qemu_settings() -> dict[str, str]:
    """qemu.conf keys Haven sets, values as libvirt's config syntax."""
    return {
        # Guests run as an unprivileged user: a guest that escapes QEMU is that user,
        # who owns only the disks of running guests (and reads base images).
        "user": f'"{QEMU_USER}"',
        "group": f'"{QEMU_GROUP}"',
        # Disks may live on storage shared by several hypervisors: libvirt must never
        # chown them back and forth; Haven gives them to the QEMU user when it makes them.
        "dynamic_ownership": "0",
        "remember_owner": "0",
        # QEMU's own seccomp filter: no exec, no privilege changes, no obsolete calls.
        "seccomp_sandbox": "1",
        # No AppArmor or SELinux on Haven nodes (and none in containers or the lab's
        # namespaces): "none" is the only driver libvirt can load here. No per-guest
        # cgroups or private /dev (no systemd delegation, no private mount namespaces
        # in containers).
        "security_driver": '"none"',
        "cgroup_controllers": "[ ]",
        "namespaces": "[ ]",
        # Disk leases through virtlockd (qemu-lockd.conf below).
        "lock_manager": '"lockd"',
    }


def lockd_settings(leases: Path) -> dict[str, str]:
    """qemu-lockd.conf keys: a required lease on every disk, in the lockspace ``leases``
    (a lease is a file named by a hash of the disk's path, locked by virtlockd)."""
    return {
        "auto_disk_leases": "1",
        "require_lease_for_disks": "1",
        "file_lockspace_dir": f'"{leases}"',
    }


def config_files(leases: Path) -> dict[str, dict[str, str]]:
    """File name under /etc/libvirt -> the keys Haven sets in it."""
    return {"qemu.conf": qemu_settings(), "qemu-lockd.conf": lockd_settings(leases)}


def apply_settings(text: str, settings: Mapping[str, str], why: str = "haven") -> str:
    """``text`` (a libvirt-style ``key = value`` file) with Haven's block set.

    Active lines setting one of the keys are commented out (libvirt would honour
    the first), an older Haven block is replaced, and the settings are appended
    in one marked block, so the file says what Haven changed. Applying it twice
    gives the same text.
    """
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + rest.split(END, 1)[1].lstrip("\n")
    pattern = re.compile(r"^\s*(" + "|".join(map(re.escape, settings)) + r")\s*=")
    lines = [f"# ({why}) {line}" if pattern.match(line) else line
             for line in text.splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    block = [BEGIN] + [f"{key} = {value}" for key, value in settings.items()] + [END]
    return "\n".join(lines + ([""] if lines else []) + block) + "\n"


def configure_libvirt(etc_libvirt: Path, leases: Path) -> bool:
    """Write Haven's settings into ``etc_libvirt``'s qemu.conf and qemu-lockd.conf
    (``/etc/libvirt`` on a node; a node's private copy in the lab), leases in
    ``leases`` (:func:`lease_dir`). True if a file changed (libvirtd must then be
    restarted)."""
    changed = False
    etc_libvirt.mkdir(parents=True, exist_ok=True)
    for name, settings in config_files(leases).items():
        path = etc_libvirt / name
        text = path.read_text() if path.exists() else ""
        new = apply_settings(text, settings)
        if new != text:
            tmp = path.with_name(f".{name}.haven-tmp")
            tmp.write_text(new)
            tmp.replace(path)
            changed = True
    return changed


def make_lease_dir(leases: Path) -> Path:
    """The lockspace directory, private to root (virtlockd runs as root)."""
    leases.mkdir(mode=0o700, parents=True, exist_ok=True)
    leases.chmod(0o700)
    return leases


def read_settings(path: Path) -> dict[str, str]:
    """The active ``key = value`` lines of a libvirt config file (first one wins, as
    in libvirt); used to check a node before its compute agent starts."""
    found: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return found
    for line in text.splitlines():
        match = re.match(r"^\s*([A-Za-z_]+)\s*=\s*(.*?)\s*$", line)
        if match and match.group(1) not in found:
            found[match.group(1)] = match.group(2)
    return found


def missing_settings(etc_libvirt: Path, leases: Path) -> list[str]:
    """Haven's settings a node's libvirt files do not carry, as ``file: key = value``
    (empty when the node is configured as Haven needs)."""
    missing = []
    for name, settings in config_files(leases).items():
        active = read_settings(etc_libvirt / name)
        missing += [f"{name}: {key} = {value}" for key, value in settings.items()
                    if active.get(key) != value]
    return missing

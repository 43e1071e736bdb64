"""Files the unprivileged QEMU user needs, and nobody else.

libvirt runs QEMU as ``libvirt-qemu`` (hostconf.py) and, with
``dynamic_ownership = 0`` (disks may be on storage shared by several
hypervisors), never chowns anything: Haven does, when it makes the file.

* an instance disk: owned by the QEMU user, 0600 (QEMU writes it);
* a base image: owned by the service user, group of the QEMU user, 0440 (QEMU
  reads it through an overlay's backing chain, nobody writes it);
* the directories on the way: owned by the service user, group of the QEMU
  user, 0710 (QEMU may pass through, not list);
* the console log: owned by the QEMU user, 0600.

Every file is private from its creation (``os.open`` mode, or a umask of 077
for ``qemu-img``), and given to the QEMU user before it is renamed into place.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.compute.virt.hostconf import QEMU_GROUP, QEMU_USER

DISK_MODE = 0o600
BASE_MODE = 0o440
DIR_MODE = 0o710
PRIVATE_UMASK = 0o077


class QemuUserError(Exception):
    """The QEMU user or group does not exist, or cannot reach the instances directory."""


@dataclass(frozen=True)
class QemuIds:
    uid: int
    gid: int
    groups: frozenset[int]  # every group QEMU runs with (libvirt adds the user's groups)


def qemu_ids(user: str = QEMU_USER, group: str = QEMU_GROUP) -> QemuIds:
    """The QEMU user's ids; QemuUserError when libvirt's package did not make them."""
    try:
        pw = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise QemuUserError(f"no user/group {exc.args[0]} on this host: install "
                            "libvirt-daemon-system") from None
    groups = frozenset(os.getgrouplist(user, pw.pw_gid)) | {gid}
    return QemuIds(pw.pw_uid, gid, groups)


def run_private(cmd: Sequence[str], timeout: float = 120) -> None:
    """Run ``cmd`` (``qemu-img create``) so the files it creates are 0600 from the start."""
    subprocess.run(list(cmd), check=True, capture_output=True, timeout=timeout,
                   umask=PRIVATE_UMASK)


def give_disk(path: Path, ids: QemuIds | None = None) -> None:
    """Make ``path`` the QEMU user's own (a disk QEMU writes, its console log)."""
    ids = ids or qemu_ids()
    os.chown(path, ids.uid, ids.gid)
    os.chmod(path, DISK_MODE)


def share_base(path: Path, ids: QemuIds | None = None) -> None:
    """Let QEMU (only) read ``path`` (a base image under many overlays)."""
    ids = ids or qemu_ids()
    os.chown(path, -1, ids.gid)
    os.chmod(path, BASE_MODE)


def passable_dir(path: Path, ids: QemuIds | None = None) -> None:
    """Make (or fix) a directory QEMU passes through to reach its files."""
    ids = ids or qemu_ids()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(path, -1, ids.gid)
    os.chmod(path, DIR_MODE)


KVM_DEVICE = Path("/dev/kvm")
KVM_GROUP = "kvm"  # Debian's udev gives /dev/kvm to it (0660); the QEMU user is in it


def ensure_kvm_access(ids: QemuIds | None = None, device: Path = KVM_DEVICE) -> bool:
    """Give /dev/kvm to group kvm, 0660, as Debian's udev rule does, where nothing did
    (containers and machines without udev leave it root's, 0600). True if changed.

    Not for speed of guests (Haven's guests may run under TCG) but of libvirt: its
    capability probe sees KVM, and when the QEMU user cannot open /dev/kvm libvirt
    judges the probe stale and re-probes on every domain definition (44 s each,
    measured on this platform; 0.00 s once the QEMU user can open it).
    """
    ids = ids or qemu_ids()
    try:
        st = device.stat()
        kvm_gid = grp.getgrnam(KVM_GROUP).gr_gid
    except (FileNotFoundError, KeyError):
        return False  # no KVM here, or no kvm group: libvirt sees no KVM either
    if _passes(st, ids, stat.S_IRUSR | stat.S_IWUSR, stat.S_IRGRP | stat.S_IWGRP,
               stat.S_IROTH | stat.S_IWOTH) or kvm_gid not in ids.groups:
        return False
    os.chown(device, -1, kvm_gid)
    os.chmod(device, stat.S_IMODE(st.st_mode) | 0o660)
    return True


def _passes(st: os.stat_result, ids: QemuIds, user: int, group: int, other: int) -> bool:
    """Whether the QEMU user has every ``user``/``group``/``other`` bit that applies
    to it on a file with status ``st`` (as the kernel picks the class: owner, group,
    others)."""
    if st.st_uid == ids.uid:
        return st.st_mode & user == user
    if st.st_gid in ids.groups:
        return st.st_mode & group == group
    return st.st_mode & other == other


def create_private(path: Path) -> None:
    """Create an empty file (a console log) that is 0600 from its creation."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def blocked_ancestors(path: Path, ids: QemuIds | None = None) -> list[Path]:
    """The directories from / to ``path`` that the QEMU user cannot pass through
    (empty when it can reach ``path``): checked from the modes, as the kernel does."""
    ids = ids or qemu_ids()
    blocked = []
    for directory in [*reversed(path.parents), path]:
        try:
            st = directory.stat()
        except FileNotFoundError:
            break
        if not _passes(st, ids, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            blocked.append(directory)
    return blocked

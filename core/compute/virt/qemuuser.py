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
        if st.st_uid == ids.uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in ids.groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            blocked.append(directory)
    return blocked

"""What Haven's files must look like on disk: private to its user, and to the QEMU
user where QEMU must read them (README, "Safety")."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

QEMU = "libvirt-qemu"


def mode_owner(path: Path) -> tuple[int, str, str]:
    st = path.stat()
    return (stat.S_IMODE(st.st_mode), pwd.getpwuid(st.st_uid).pw_name,
            grp.getgrgid(st.st_gid).gr_name)


def assert_private_layout(state: Path, instance: str) -> None:
    """The state directory of a cloud with compute (instances inside it), after
    ``instance`` was built from an uploaded image."""
    me = pwd.getpwuid(os.getuid()).pw_name
    # nobody else may enter; the QEMU user may only pass through to the instances
    assert mode_owner(state) == (0o710, me, QEMU)
    assert mode_owner(state / "haven.db")[:2] == (0o600, me)
    assert mode_owner(state / "fernet-keys")[0] == 0o700
    assert {mode_owner(k)[0] for k in (state / "fernet-keys").iterdir()} == {0o600}
    assert mode_owner(state / "images")[0] == 0o700
    assert {mode_owner(i)[0] for i in (state / "images").iterdir()} == {0o600}
    instances = state / "instances"
    assert mode_owner(instances) == (0o710, me, QEMU)
    assert mode_owner(instances / instance) == (0o710, me, QEMU)
    assert mode_owner(instances / instance / "disk") == (0o600, QEMU, QEMU)
    assert mode_owner(instances / instance / "console.log") == (0o600, QEMU, QEMU)
    base = instances / "_base"
    assert mode_owner(base) == (0o710, me, QEMU)
    images = [p for p in base.iterdir() if "." not in p.name]
    assert images and {mode_owner(b) for b in images} == {(0o440, me, QEMU)}
    assert {mode_owner(p)[0] for p in base.iterdir() if "." in p.name} == {0o600}

"""Ownership and modes for the QEMU user (core/compute/virt/qemuuser.py)."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest

from core.compute.virt import qemuuser

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")


def test_a_kvm_device_only_root_can_open_is_given_to_group_kvm(tmp_path: Path) -> None:
    """Without it libvirt re-probes QEMU on every definition (44 s each, measured)."""
    device = tmp_path / "kvm"
    os.close(os.open(device, os.O_CREAT | os.O_WRONLY, 0o600))
    assert qemuuser.ensure_kvm_access(device=device) is True
    st = device.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, grp.getgrnam("kvm").gr_gid)
    assert qemuuser.ensure_kvm_access(device=device) is False  # nothing more to do


def test_blocked_ancestors_names_the_directory_qemu_cannot_pass(tmp_path: Path) -> None:
    ids = qemuuser.qemu_ids()
    outer = tmp_path / "outer"
    outer.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o711)
    inner = outer / "instances"
    inner.mkdir()
    blocked = qemuuser.blocked_ancestors(inner, ids)
    assert outer in blocked
    qemuuser.passable_dir(outer, ids)
    assert outer not in qemuuser.blocked_ancestors(inner, ids)

"""The libvirt configuration every Haven hypervisor gets (core/compute/virt/hostconf.py)."""

from __future__ import annotations

from pathlib import Path

from core.compute.virt import hostconf

PACKAGED = ('# user = "libvirt-qemu"\n'
            'security_driver = "apparmor"\n'
            'vnc_listen = "0.0.0.0"\n')


def active(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_settings_replace_active_lines_and_say_who_set_them() -> None:
    text = hostconf.apply_settings(PACKAGED, hostconf.qemu_settings())
    lines = active(text)
    assert 'vnc_listen = "0.0.0.0"' in lines  # untouched
    assert 'security_driver = "apparmor"' not in lines
    assert '# (haven) security_driver = "apparmor"' in text
    for line in ('user = "libvirt-qemu"', 'group = "libvirt-qemu"', "seccomp_sandbox = 1",
                 "dynamic_ownership = 0", 'lock_manager = "lockd"'):
        assert lines.count(line) == 1, line
    assert 'user = "root"' not in lines


def test_applying_twice_changes_nothing() -> None:
    once = hostconf.apply_settings(PACKAGED, hostconf.qemu_settings())
    assert hostconf.apply_settings(once, hostconf.qemu_settings()) == once


def test_leases_on_the_shared_instances_directory(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc).mkdir()
    (etc / "qemu.conf").write_text(PACKAGED)
    leases = hostconf.lease_dir(Path("/srv/shared/instances"))
    assert hostconf.missing_settings(etc, leases)  # the packaged file has no leases
    assert hostconf.configure_libvirt(etc, leases) is True
    assert hostconf.configure_libvirt(etc, leases) is False  # nothing to restart for
    lockd = active((etc / "qemu-lockd.conf").read_text())
    assert lockd == ["auto_disk_leases = 1", "require_lease_for_disks = 1",
                     'file_lockspace_dir = "/srv/shared/instances/.leases"']
    assert hostconf.missing_settings(etc, leases) == []
    assert hostconf.missing_settings(etc, hostconf.LOCAL_LEASE_DIR) == [
        'qemu-lockd.conf: file_lockspace_dir = "/var/lib/libvirt/lockd/files"']


def test_local_instances_keep_their_leases_on_the_machine() -> None:
    assert hostconf.lease_dir(None) == hostconf.LOCAL_LEASE_DIR

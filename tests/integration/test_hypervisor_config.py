"""What `haven cluster node-config` writes for a hypervisor, run by real daemons.

Two hypervisors of one plan get their libvirt configuration from the real
``haven cluster node-config`` command, each on a copy of the packaged
/etc/libvirt, and run virtlockd, virtlogd and libvirtd with exactly those
files (tests/privatehost.py: each in its own mount namespace, not a lab). They
share one instances directory, as hosts share NFS. A guest runs on the first;
the same guest started on the second (what an evacuation without a fence would
do) is refused by the disk lease in the shared lockspace, and its QEMU runs as
the unprivileged QEMU user, with a disk nobody else can read.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import pwd
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
import yaml

from core.compute.virt.hostconf import LEASES_DIRNAME, QEMU_USER
from core.compute.virt.libvirt import DomainSpec, domain_xml
from core.compute.virt.qemuuser import give_disk, passable_dir, qemu_ids, run_private
from tests.privatehost import PrivateHypervisor, seed_etc

HAVEN = Path(sys.executable).parent / "haven"
NODES = ("hv1", "hv2")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, chown)")


@pytest.fixture
def shared() -> Iterator[Path]:
    """The storage both hypervisors mount: outside pytest's 0700 temporary tree, so
    the QEMU user can reach it as it reaches /srv on a real node."""
    base = Path(tempfile.mkdtemp(prefix="haven-shared-", dir="/var/tmp"))
    base.chmod(0o755)
    yield base
    subprocess.run(["rm", "-rf", str(base)], check=False)


def node_config(tmp_path: Path, shared: Path, node: str) -> Path:
    """Run `haven cluster node-config` for ``node`` on a fresh node root; its
    /etc/libvirt (the packaged files plus what node-config wrote)."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "nodes": list(NODES), "vip": "192.0.2.100/24", "vip_nic": "eth0",
        "addresses": {"hv1": "192.0.2.1", "hv2": "192.0.2.2"},
        "hypervisors": list(NODES), "shared_dir": str(shared)}))
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(yaml.safe_dump({"db_password": "d", "bus_password": "b",
                                       "service_password": "s", "erlang_cookie": "C"}))
    root = tmp_path / node
    etc = seed_etc(root / "etc" / "libvirt")
    out = subprocess.run([str(HAVEN), "cluster", "node-config", "--plan", str(plan),
                          "--secrets", str(secrets), "--node", node, "--ca", str(tmp_path / "ca"),
                          "--root", str(root)],
                         capture_output=True, text=True, check=True)
    assert str(etc / "qemu-lockd.conf") in out.stdout
    return etc


@pytest.fixture
def guest(shared: Path) -> DomainSpec:
    return guest_disk(shared / "instances")


@pytest.fixture
def hypervisors(tmp_path: Path, shared: Path, guest: DomainSpec
                ) -> Iterator[list[PrivateHypervisor]]:
    """Two hypervisors on one shared instances directory. The second sees the guest's
    disk as another file at the same path (a copy bound over it in its namespace): as
    a host on NFS whose kernel does not see the first host's QEMU image lock, so only
    the lease can stop a second QEMU (on one kernel, QEMU's own lock would first)."""
    directory = guest.disk_path.parent
    other_view = tmp_path / "hv2-view"
    subprocess.run(["cp", "-a", str(directory), str(other_view)], check=True)
    started: list[PrivateHypervisor] = []
    try:
        for node in NODES:
            etc = node_config(tmp_path, shared, node)
            binds = ((other_view, directory),) if node == "hv2" else ()
            started.append(PrivateHypervisor(tmp_path / f"{node}-state", etc, binds=binds))
        yield started
    finally:
        for hv in started:
            hv.stop()


def guest_disk(instances: Path) -> DomainSpec:
    """An instance directory, disk and console as the compute agent makes them."""
    ids = qemu_ids()
    passable_dir(instances, ids)
    instance = str(uuid.uuid4())
    directory = instances / instance
    passable_dir(directory, ids)
    disk = directory / "disk"
    run_private(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"])
    give_disk(disk, ids)
    return DomainSpec(uuid=instance, name="lease-test", vcpus=1, memory_mb=64, disk_path=disk,
                      console_path=directory / "console.log", mac_address=None,
                      project_id="test", cloud_id="lease-test")


def qemu_uid(hv: PrivateHypervisor, dom: libvirt.virDomain) -> int:
    pid = int((hv.root / "run" / "libvirt" / "qemu" / f"{dom.name()}.pid").read_text())
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def readable_as(user: str, path: Path) -> bool:
    """Whether ``user`` can open ``path`` for reading (tried in a child as that user)."""
    entry = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups(os.getgrouplist(user, entry.pw_gid))
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os.close(os.open(path, os.O_RDONLY))
            os._exit(0)
        except OSError:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def lease_file(lockspace: Path, disk: Path) -> Path:
    """virtlockd's indirect lease of a disk: the SHA-256 of its path, in the lockspace."""
    return lockspace / hashlib.sha256(str(disk).encode()).hexdigest()


def lease_held(lease: Path) -> bool:
    """Whether some process (virtlockd) holds the lease's lock (fcntl, its first byte).
    virtlockd removes a lease file it made once it releases it: gone is not held."""
    try:
        fd = os.open(lease, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        return False
    finally:
        os.close(fd)


def test_second_qemu_on_a_running_guests_disk_is_refused_by_the_shared_lease(
        hypervisors: list[PrivateHypervisor], shared: Path, guest: DomainSpec) -> None:
    first, second = hypervisors
    spec = guest
    xml = domain_xml(spec, "qemu")
    conn1, conn2 = first.connect(), second.connect()
    try:
        dom1 = conn1.defineXML(xml)
        dom1.create()
        assert dom1.isActive()
        # QEMU runs unprivileged, on a disk that is its own and nobody else's.
        assert qemu_uid(first, dom1) == pwd.getpwnam(QEMU_USER).pw_uid
        assert not readable_as("nobody", spec.disk_path)
        assert readable_as(QEMU_USER, spec.disk_path)
        dom2 = conn2.defineXML(xml)
        with pytest.raises(libvirt.libvirtError) as refused:
            dom2.create()
        # Refused by virtlockd's lease on the shared storage (taken as libvirt resumes
        # the paused QEMU, which it then kills).
        assert refused.value.get_error_code() == libvirt.VIR_ERR_RESOURCE_BUSY, \
            refused.value
        assert "ockspace" in str(refused.value)
        assert not dom2.isActive()
        assert dom1.isActive()
        # The lease of this disk lives on the shared storage, where every host looks,
        # and the first host's virtlockd holds it.
        lease = lease_file(shared / "instances" / LEASES_DIRNAME, spec.disk_path)
        assert lease.is_file(), sorted(lease.parent.iterdir())
        assert lease_held(lease)

        # Once the first host's guest is gone (its lease with it), the second may run it.
        dom1.destroy()
        assert not lease_held(lease)
        dom2.create()
        assert dom2.isActive()
        dom2.destroy()
    finally:
        conn1.close()
        conn2.close()

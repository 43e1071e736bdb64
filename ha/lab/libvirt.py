"""libvirtd inside lab nodes (``haven lab up --libvirt``).

Each node runs its own virtlockd (disk leases), virtlogd + libvirtd (virtlogd
first, or domains fail to start) with the qemu.conf settings that let several
libvirtds share one kernel (``core.compute.virt.hostconf``, as on every Haven
hypervisor). The first libvirtd to start
spends ~8 s probing QEMU's capabilities; its cache is kept as a warm copy in the
lab directory and seeded into every node booted after it, which then skips the
probe.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from core.compute.virt.hostconf import configure_libvirt, lease_dir, make_lease_dir
from core.compute.virt.qemuuser import ensure_kvm_access
from ha.lab import config, node
from ha.lab.commands import wait_until
from ha.lab.state import NodeState

URI = "qemu:///system"


def shared_instances(lab_dir: Path) -> Path:
    """The instances directory every lab node shares (stack.paths(...).shared)."""
    return lab_dir / "stack" / "shared" / "instances"


def warm_cache(lab_dir: Path) -> Path:
    return lab_dir / "cache" / "libvirt-qemu"


def configure(lab_dir: Path, name: str) -> None:
    """Write the node's private libvirt configuration as every Haven hypervisor's
    (hostconf.py), with disk leases on the lab's shared instances directory."""
    etc_libvirt = config.node_source(node.root_dir(lab_dir, name), "/etc/libvirt")
    instances = shared_instances(lab_dir)
    instances.mkdir(parents=True, exist_ok=True)
    configure_libvirt(etc_libvirt, lease_dir(instances))
    make_lease_dir(lease_dir(instances))


def start(lab_dir: Path, nd: NodeState, timeout: float = 60.0) -> None:
    """Start virtlogd and libvirtd in the node and wait until libvirtd answers."""
    cache = config.node_source(node.root_dir(lab_dir, nd.name), "/var/cache/libvirt") / "qemu"
    warm = warm_cache(lab_dir)
    if warm.is_dir() and not (cache / "capabilities").is_dir():
        shutil.copytree(warm, cache, symlinks=True, dirs_exist_ok=True)
    ensure_kvm_access()  # before libvirtd probes QEMU (qemuuser.py says why)
    node.spawn_in(lab_dir, nd, ["virtlockd", "-d"], "libvirt.out")
    wait_until(lambda: node.exec_in(nd, ["test", "-S", "/run/libvirt/virtlockd-sock"],
                                    check=False).returncode == 0,
               timeout, f"virtlockd on {nd.name}")
    node.spawn_in(lab_dir, nd, ["virtlogd", "-d"], "libvirt.out")
    wait_until(lambda: node.exec_in(nd, ["test", "-S", "/run/libvirt/virtlogd-sock"],
                                    check=False).returncode == 0,
               timeout, f"virtlogd on {nd.name}")
    node.spawn_in(lab_dir, nd, ["libvirtd", "-d"], "libvirt.out")
    # Asking for the capabilities makes libvirtd probe QEMU (or read the seeded
    # cache), so the node is warm before any test boots a guest on it.
    wait_until(lambda: node.exec_in(nd, ["virsh", "-c", URI, "capabilities"], check=False,
                                    timeout=timeout).returncode == 0,
               timeout, f"libvirtd on {nd.name}", interval=0.5)
    if not warm.is_dir() and (cache / "capabilities").is_dir():
        shutil.copytree(cache, warm, symlinks=True)

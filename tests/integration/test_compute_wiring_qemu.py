"""The compute agent's guest NIC and config drive on a real libvirtd and QEMU.

libvirtd runs in namespaces of its own (tests/privatehost.py: a private mount and an
empty network namespace), so the tap libvirt makes for the guest lives there, never
on the machine's own network. The guest's disk is a blank image (no OS): what is
checked is what libvirt and QEMU made of the agent's domain, paused until the test,
standing in for the hypervisor's network agent, sets the port ACTIVE.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from core.common.clients import ServiceClients
from core.common.hostnet import tap_name
from core.compute.agent import ComputeAgent
from core.compute.virt.libvirt import LibvirtDriver
from tests.integration.test_compute_agent import Cloud, make_cloud, wait
from tests.privatehost import PrivateHypervisor, seed_etc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, chown)")


@pytest.fixture
def shared() -> Iterator[Path]:
    """Instances outside pytest's 0700 temporary tree, reachable by the QEMU user."""
    base = Path(tempfile.mkdtemp(prefix="haven-cw-", dir="/var/tmp"))
    base.chmod(0o755)
    yield base
    subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.fixture
def hypervisor(tmp_path: Path) -> Iterator[PrivateHypervisor]:
    hv = PrivateHypervisor(tmp_path / "hv", seed_etc(tmp_path / "etc" / "libvirt"))
    yield hv
    hv.stop()


@pytest.fixture
def cloud(tmp_path: Path, shared: Path) -> Iterator[Cloud]:
    c = make_cloud(tmp_path, "local", [])
    c.cfg.compute.instances_dir = str(shared / "instances")
    yield c
    c.servers.stop()
    c.bus.close()


def tap_in(hv: PrivateHypervisor, tap: str) -> str:
    """``ip -o link show`` of the tap, in libvirtd's network namespace."""
    pid = hv.pid("libvirtd")
    assert pid is not None
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-o", "link", "show", tap],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_real_guest_paused_with_its_tap_then_resumed(cloud: Cloud,
                                                     hypervisor: PrivateHypervisor) -> None:
    cloud.cfg.compute.vif_plugging_timeout = 600
    cloud.cfg.compute.force_config_drive = True
    agent = ComputeAgent(cloud.cfg, cloud.db, cloud.bus, LibvirtDriver(hypervisor.uri, "qemu"),
                         ServiceClients(cloud.cfg))
    agent.start()
    try:
        server_id = cloud.create("real")
        wait(lambda: agent.driver.is_paused(server_id) or
             cloud.instance(server_id).vm_state == "error", timeout=300)
        assert cloud.instance(server_id).fault is None
        clients = ServiceClients(cloud.cfg)
        port = clients.request("GET", "network",
                               f"/v2.0/ports/{cloud.instance(server_id).port_id}").json()["port"]
        mtu = clients.request("GET", "network",
                              f"/v2.0/networks/{port['network_id']}").json()["network"]["mtu"]
        live = ET.fromstring(agent.driver.xml(server_id))  # what libvirt made of it
        (nic,) = live.findall("./devices/interface")
        tap = tap_name(port["id"])
        assert nic.find("target").get("dev") == tap  # type: ignore[union-attr]
        assert nic.find("mac").get("address") == port["mac_address"]  # type: ignore[union-attr]
        assert nic.find("mtu").get("size") == str(mtu)  # type: ignore[union-attr]
        link = tap_in(hypervisor, tap)
        assert f"mtu {mtu} " in link
        assert port["mac_address"] not in link  # the tap is the host end, not the guest's
        (cdrom,) = [d for d in live.findall("./devices/disk") if d.get("device") == "cdrom"]
        assert cdrom.find("target").get("bus") == "ide"  # type: ignore[union-attr]
        assert cdrom.find("readonly") is not None
        assert cloud.instance(server_id).vm_state == "building"

        clients.request("PUT", "network", f"/v2.0/ports/{port['id']}",
                        json={"port": {"status": "ACTIVE"}})
        wait(lambda: cloud.instance(server_id).vm_state == "active", timeout=120)
        assert agent.driver.is_running(server_id) and not agent.driver.is_paused(server_id)
    finally:
        agent.stop()

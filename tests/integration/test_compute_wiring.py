"""The compute agent wiring a guest to its network: binding, vif plugging, config drive,
metadata lookup.

Real identity, image, network and compute APIs (in-process, SQLite), the real agent,
libvirt's test driver as the hypervisor (as tests/integration/test_compute_agent.py:
the agent's decisions; real QEMU in test_compute_wiring_qemu.py). The test stands in
for the network agent of the hypervisor: it sets the port ACTIVE through the network
API, as that agent does once the tap is on the bridge and filtered.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import requests

from core.common.clients import ServiceClients
from core.common.hostnet import METADATA_ADDRESS, tap_name
from core.compute import guestdata
from core.compute.agent import ComputeAgent
from core.compute.metadata.listener import MetadataListeners
from core.compute.metadata.lookup import CallableLookup, LookupUnavailable
from core.compute.virt.libvirt import LibvirtDriver
from tests.conftest import free_port
from tests.integration.test_compute_agent import HOST, Cloud, make_cloud, wait

OTHER = "agent-test-host-b"


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = make_cloud(tmp_path, "local", [])
    yield c
    c.servers.stop()
    c.bus.close()


def port_of(cloud: Cloud, server_id: str) -> dict[str, Any]:
    port_id = cloud.instance(server_id).port_id
    assert port_id
    return dict(ServiceClients(cloud.cfg).request(
        "GET", "network", f"/v2.0/ports/{port_id}").json()["port"])


def set_active(cloud: Cloud, port_id: str) -> None:
    """What the hypervisor's network agent does once it plugged and filtered the tap."""
    ServiceClients(cloud.cfg).request("PUT", "network", f"/v2.0/ports/{port_id}",
                                      json={"port": {"status": "ACTIVE"}})


def interface(agent: ComputeAgent, server_id: str) -> ET.Element:
    (nic,) = ET.fromstring(agent.driver.xml(server_id)).findall("./devices/interface")
    return nic


def test_guest_runs_only_once_its_port_is_plugged(cloud: Cloud) -> None:
    """Bound to the host, defined with its tap, MAC and MTU, started paused; the port
    going ACTIVE lets it run."""
    cloud.cfg.compute.vif_plugging_timeout = 600
    agent = cloud.agent()
    agent.start()
    try:
        server_id = cloud.create("plugged")
        wait(lambda: agent.driver.is_paused(server_id))
        port = port_of(cloud, server_id)
        assert port["binding:host_id"] == HOST
        assert port["status"] == "DOWN"
        assert cloud.instance(server_id).vm_state == "building"  # not reported running
        nic = interface(agent, server_id)
        assert nic.get("type") == "ethernet"
        assert nic.find("target").get("dev") == tap_name(port["id"])  # type: ignore[union-attr]
        assert nic.find("mac").get("address") == port["mac_address"]  # type: ignore[union-attr]
        assert nic.find("model").get("type") == "virtio"  # type: ignore[union-attr]
        mtu = ServiceClients(cloud.cfg).request(
            "GET", "network", f"/v2.0/networks/{port['network_id']}").json()["network"]["mtu"]
        assert nic.find("mtu").get("size") == str(mtu)  # type: ignore[union-attr]

        set_active(cloud, port["id"])
        wait(lambda: cloud.instance(server_id).vm_state == "active")
        assert agent.driver.is_running(server_id)
        assert not agent.driver.is_paused(server_id)
    finally:
        agent.stop()


def test_port_never_plugged_is_an_error_and_no_paused_domain(cloud: Cloud) -> None:
    """vif_plugging_is_fatal: the build fails with a fault that says why, and the
    domain is gone, not left paused."""
    cloud.cfg.compute.vif_plugging_timeout = 1
    agent = cloud.agent()
    agent.start()
    try:
        server_id = cloud.create("unplugged")
        wait(lambda: cloud.instance(server_id).vm_state == "error", timeout=120)
        inst = cloud.instance(server_id)
        assert inst.fault is not None and "virtual interface" in inst.fault
        assert "not plugged" in inst.fault
        assert not agent.driver.exists(server_id)
        assert cloud.instance(server_id).task_state is None
    finally:
        agent.stop()


def test_not_fatal_runs_the_guest_anyway(cloud: Cloud) -> None:
    cloud.cfg.compute.vif_plugging_timeout = 1
    cloud.cfg.compute.vif_plugging_is_fatal = False
    agent = cloud.agent()
    agent.start()
    try:
        server_id = cloud.create("unplugged-ok")
        wait(lambda: cloud.instance(server_id).vm_state == "active", timeout=120)
        assert agent.driver.is_running(server_id) and not agent.driver.is_paused(server_id)
    finally:
        agent.stop()


def config_drive_file(iso: Path, name: str, out: Path) -> bytes:
    target = out / name.replace("/", "_")
    subprocess.run(["xorriso", "-indev", str(iso), "-osirrox", "on", "-extract", f"/{name}",
                    str(target)], check=True, capture_output=True)
    return target.read_bytes()


def iso_label(iso: Path) -> str:
    with open(iso, "rb") as fh:
        fh.seek(16 * 2048)
        pvd = fh.read(72)
    assert pvd[1:6] == b"CD001"
    return pvd[40:72].decode().rstrip()


def test_evacuation_moves_the_binding_keeps_the_port_and_rebuilds_the_drive(
        cloud: Cloud, tmp_path: Path) -> None:
    """The port (id, MAC, fixed IP) stays; its binding moves to the new host and is DOWN
    until that host's network agent plugs it; the config drive is built there again."""
    cloud.cfg.compute.vif_plugging_timeout = 600
    cloud.cfg.compute.force_config_drive = True
    agent = cloud.agent()
    agent.start()
    other: ComputeAgent | None = None
    try:
        server_id = cloud.create("evacuee")
        wait(lambda: agent.driver.is_paused(server_id))
        before = port_of(cloud, server_id)
        set_active(cloud, before["id"])
        wait(lambda: cloud.instance(server_id).vm_state == "active")

        drive = cloud.cfg.instances_path / server_id / "disk.config"
        (cdrom,) = [d for d in ET.fromstring(agent.driver.xml(server_id)).findall(
            "./devices/disk") if d.get("device") == "cdrom"]
        assert cdrom.find("source").get("file") == str(drive)  # type: ignore[union-attr]
        assert cdrom.find("target").get("bus") == "ide"  # type: ignore[union-attr]
        assert cdrom.find("readonly") is not None
        assert iso_label(drive) == "config-2"
        meta = json.loads(config_drive_file(drive, "openstack/latest/meta_data.json", tmp_path))
        inst = cloud.instance(server_id)
        assert (meta["uuid"], meta["name"], meta["project_id"]) == (
            server_id, "evacuee", inst.project_id)
        network = json.loads(config_drive_file(drive, "openstack/latest/network_data.json",
                                               tmp_path))
        assert network["links"][0]["ethernet_mac_address"] == before["mac_address"]
        assert network["links"][0]["id"] == tap_name(before["id"])
        first_inode = drive.stat().st_ino

        # the host dies: its agent is gone, its guest with it; it is forced down
        agent.stop()
        agent.driver.destroy(server_id)
        cfg_b = copy.deepcopy(cloud.cfg)
        cfg_b.compute.host = OTHER
        other = ComputeAgent(cfg_b, cloud.db, cloud.bus, LibvirtDriver("test:///default", "qemu"),
                             ServiceClients(cfg_b))
        other.register()
        headers = {"X-Auth-Token": cloud.token}
        resp = requests.put(f"{cloud.compute_url}/os-services/force-down", timeout=30,
                            headers={**headers, "OpenStack-API-Version": "compute 2.11"},
                            json={"host": HOST, "binary": "nova-compute", "forced_down": True})
        assert resp.status_code == 200, resp.text
        resp = requests.post(f"{cloud.compute_url}/servers/{server_id}/action", timeout=30,
                             headers=headers, json={"evacuate": {"host": OTHER}})
        assert resp.status_code == 200, resp.text
        other.start()
        wait(lambda: other is not None and other.driver.is_paused(server_id))
        after = port_of(cloud, server_id)
        assert after["binding:host_id"] == OTHER
        assert after["status"] == "DOWN"  # the dead host's ACTIVE is not this host's
        assert (after["id"], after["mac_address"], after["fixed_ips"]) == (
            before["id"], before["mac_address"], before["fixed_ips"])
        assert interface(other, server_id).find("target").get(  # type: ignore[union-attr]
            "dev") == tap_name(before["id"])
        assert cloud.instance(server_id).vm_state == "active"
        assert cloud.instance(server_id).task_state == "rebuilding"
        assert drive.stat().st_ino != first_inode  # built again, on the new host

        set_active(cloud, after["id"])
        wait(lambda: cloud.instance(server_id).task_state is None)
        assert cloud.instance(server_id).host == OTHER
        assert other.driver.is_running(server_id) and not other.driver.is_paused(server_id)
    finally:
        if other is not None:
            other.stop()
        agent.stop()


def test_evacuated_guest_whose_port_never_plugs_is_destroyed(cloud: Cloud) -> None:
    """The rebuild path waits too: on the new host an unplugged port is an ERROR and no
    domain is left behind (paused or not)."""
    cloud.cfg.compute.vif_plugging_timeout = 600
    agent = cloud.agent()
    agent.start()
    other: ComputeAgent | None = None
    try:
        server_id = cloud.create("evacuee-unplugged")
        wait(lambda: agent.driver.is_paused(server_id))
        set_active(cloud, port_of(cloud, server_id)["id"])
        wait(lambda: cloud.instance(server_id).vm_state == "active")
        agent.stop()
        agent.driver.destroy(server_id)
        cfg_b = copy.deepcopy(cloud.cfg)
        cfg_b.compute.host = OTHER
        cfg_b.compute.vif_plugging_timeout = 1
        other = ComputeAgent(cfg_b, cloud.db, cloud.bus, LibvirtDriver("test:///default", "qemu"),
                             ServiceClients(cfg_b))
        other.register()
        headers = {"X-Auth-Token": cloud.token}
        assert requests.put(f"{cloud.compute_url}/os-services/force-down", timeout=30,
                            headers={**headers, "OpenStack-API-Version": "compute 2.11"},
                            json={"host": HOST, "binary": "nova-compute",
                                  "forced_down": True}).status_code == 200
        assert requests.post(f"{cloud.compute_url}/servers/{server_id}/action", timeout=30,
                             headers=headers,
                             json={"evacuate": {"host": OTHER}}).status_code == 200
        other.start()
        wait(lambda: cloud.instance(server_id).vm_state == "error", timeout=120)
        assert "not plugged" in (cloud.instance(server_id).fault or "")
        assert not other.driver.exists(server_id)
    finally:
        if other is not None:
            other.stop()
        agent.stop()


def test_metadata_lookup_answers_for_the_port_holding_the_address(cloud: Cloud) -> None:
    """The lookup finds the instance whose port, bound to this host, holds the source
    address on that network; another address, another network or another host's
    port gets nobody; a network API that cannot answer is 'cannot tell' (503)."""
    cloud.cfg.compute.vif_plugging_timeout = 600
    agent = cloud.agent()
    agent.start()
    try:
        first, second = cloud.create("md-one"), cloud.create("md-two")
        for sid in (first, second):
            wait(lambda sid=sid: agent.driver.is_paused(sid))  # type: ignore[misc]
        lookup = CallableLookup(guestdata.HostLookup(ServiceClients(cloud.cfg), cloud.db, HOST))
        for sid, name in ((first, "md-one"), (second, "md-two")):
            inst = cloud.instance(sid)
            assert inst.fixed_ip and inst.network_id
            desc = lookup.find(inst.network_id, inst.fixed_ip)
            assert desc is not None
            assert (desc.uuid, desc.name, desc.hostname) == (sid, name, name)
            assert desc.ports[0].mac_address == inst.mac_address
        inst = cloud.instance(first)
        assert inst.network_id and inst.fixed_ip
        assert lookup.find(inst.network_id, "192.0.2.254") is None
        assert lookup.find(str(uuid.uuid4()), inst.fixed_ip) is None
        other = CallableLookup(guestdata.HostLookup(ServiceClients(cloud.cfg), cloud.db, OTHER))
        assert other.find(inst.network_id, inst.fixed_ip) is None
        cut_off = copy.deepcopy(cloud.cfg)  # an identity (so network) API nobody answers
        cut_off.identity.listen = f"127.0.0.1:{free_port()}"
        blind = CallableLookup(guestdata.HostLookup(ServiceClients(cut_off), cloud.db, HOST))
        with pytest.raises(LookupUnavailable):
            blind.find(inst.network_id, inst.fixed_ip)
    finally:
        agent.stop()


def ns_run(ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          check=False, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_metadata_listener_in_a_namespace_answers_each_guest_its_own(cloud: Cloud) -> None:
    """The agent's metadata app, bound in a namespace the test made (as the network
    agent makes the network's service namespace): a request from a guest's fixed IP
    gets that guest's meta_data.json; from an address nobody holds, 404."""
    cloud.cfg.compute.vif_plugging_timeout = 600
    agent = cloud.agent()
    agent.start()
    ns = f"haven-t-cw{uuid.uuid4().hex[:8]}"
    listeners = MetadataListeners(agent.metadata.app, METADATA_ADDRESS)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        servers = [cloud.create("md-a"), cloud.create("md-b")]
        for sid in servers:
            wait(lambda sid=sid: agent.driver.is_paused(sid))  # type: ignore[misc]
        network_id = cloud.instance(servers[0]).network_id
        assert network_id
        ns_run(ns, "ip", "link", "set", "lo", "up").check_returncode()
        addresses = [METADATA_ADDRESS, "192.0.2.250"]
        addresses += [str(cloud.instance(s).fixed_ip) for s in servers]
        for address in addresses:
            ns_run(ns, "ip", "addr", "add", f"{address}/32", "dev", "lo").check_returncode()
        assert listeners.reconcile({network_id: ns}) == {}
        url = f"http://{METADATA_ADDRESS}/openstack/latest/meta_data.json"
        for sid in servers:
            out = ns_run(ns, "curl", "-sS", "--interface", str(cloud.instance(sid).fixed_ip),
                         url)
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["uuid"] == sid
        nobody = ns_run(ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                        "--interface", "192.0.2.250", url)
        assert nobody.stdout == "404"
    finally:
        listeners.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        agent.stop()

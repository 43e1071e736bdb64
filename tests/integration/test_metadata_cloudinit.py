"""cloud-init's own OpenStack readers find everything in Haven's metadata and config drive.

The proof that matters for guests: Debian's cloud-init package (its code, run by
Debian's /usr/bin/python3 in a subprocess) reads Haven's metadata service over
HTTP from inside a guest's network namespace, and Haven's config drive image,
and finds the instance's uuid, hostname, SSH keys, user data, network data,
vendor data and EC2 tree.

The namespaces are the test's own (``haven-t-md<tag>-*``): two "hypervisor"
namespaces, each a tenant network's bridge with the metadata address and a
listener bound there by :mod:`core.compute.metadata.listener`, and three
"guests" on veths (A and B on network 1, C on network 2 with A's address).
Network 1's listener reads the hypervisor agent's JSON file, network 2's asks a
callable. Nothing is addressed outside those namespaces.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.compute.metadata import configdrive
from core.compute.metadata.app import MetadataApp
from core.compute.metadata.listener import ListenError, MetadataListener, MetadataListeners
from core.compute.metadata.lookup import (
    CallableLookup,
    JsonFileLookup,
    index_by_address,
    write_instances_file,
)
from core.compute.metadata.model import FixedIP, InstanceDescription, Keypair, Port, Subnet

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

READER = Path(__file__).resolve().parents[1] / "data" / "cloudinit_reader.py"
SYSTEM_PYTHON = "/usr/bin/python3"
NET1, NET2 = "5b0e6c1e-0000-4000-8000-000000000001", "5b0e6c1e-0000-4000-8000-000000000002"
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHavenTestKeyAAAAAAAAAAAAAAAAAAAAAAAAAA a@test"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHavenTestKeyBBBBBBBBBBBBBBBBBBBBBBBBBB b@test"
USER_DATA_A = b"#!/bin/sh\necho 'user data of A ran'\n"


def subnet(cidr: str = "10.0.0.0/24", dhcp: bool = False) -> Subnet:
    return Subnet(id=str(uuid.uuid4()), cidr=cidr, gateway_ip="10.0.0.1",
                  dns_nameservers=("10.0.0.2",), enable_dhcp=dhcp)


def instance(name: str, network: str, ip: str, mac: str, key: Keypair | None,
             user_data: bytes | None) -> InstanceDescription:
    return InstanceDescription(
        uuid=str(uuid.uuid4()), name=name, hostname=name, project_id=f"project-{name}",
        ports=(Port(id=str(uuid.uuid4()), mac_address=mac, network_id=network,
                    fixed_ips=(FixedIP(ip, subnet(), floating_ip="203.0.113.10"),),
                    mtu=1450),),
        flavor_name="m1.tiny", image_id=str(uuid.uuid4()), keypairs=(key,) if key else (),
        user_data=user_data, metadata={"role": name}, security_groups=("default",),
        vendor_data={"haven": {"vendor": name}},
    )


A = instance("vm-a", NET1, "10.0.0.5", "fa:16:3e:00:00:0a", Keypair("key-a", KEY_A), USER_DATA_A)
B = instance("vm-b", NET1, "10.0.0.6", "fa:16:3e:00:00:0b", Keypair("key-b", KEY_B), None)
C = instance("vm-c", NET2, "10.0.0.5", "fa:16:3e:00:00:0c", None, b"#cloud-config\n{}\n")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Topology:
    hv1: str
    hv2: str
    guests: dict[str, str]  # guest -> namespace


@pytest.fixture
def topology() -> Iterator[Topology]:
    tag = uuid.uuid4().hex[:6]
    hv1, hv2 = f"haven-t-md{tag}-hv1", f"haven-t-md{tag}-hv2"
    guests = {"a": f"haven-t-md{tag}-a", "b": f"haven-t-md{tag}-b", "c": f"haven-t-md{tag}-c"}
    made: list[str] = []
    try:
        for ns in (hv1, hv2, *guests.values()):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for hv in (hv1, hv2):
            ip("-n", hv, "link", "add", "br0", "type", "bridge")
            ip("-n", hv, "link", "set", "br0", "up")
            ip("-n", hv, "addr", "add", "169.254.169.254/32", "dev", "br0")
            ip("-n", hv, "route", "add", "10.0.0.0/24", "dev", "br0")
        for guest, hv, address, mac in (("a", hv1, "10.0.0.5", "fa:16:3e:00:00:0a"),
                                        ("b", hv1, "10.0.0.6", "fa:16:3e:00:00:0b"),
                                        ("c", hv2, "10.0.0.5", "fa:16:3e:00:00:0c")):
            ns = guests[guest]
            ip("-n", hv, "link", "add", f"v-{guest}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            ip("-n", hv, "link", "set", f"v-{guest}", "master", "br0", "up")
            ip("-n", ns, "link", "set", "eth0", "address", mac, "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", ns, "route", "add", "169.254.169.254/32", "dev", "eth0")
        yield Topology(hv1, hv2, guests)
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.fixture
def listeners(topology: Topology, tmp_path: Path) -> Iterator[Topology]:
    """Network 1 served from the agent's instances file, network 2 from a callable."""
    everyone = [A, B, C]
    instances_file = tmp_path / "instances.json"
    write_instances_file(instances_file, everyone)
    index = index_by_address(everyone)
    one = MetadataListener(MetadataApp(JsonFileLookup(instances_file)), NET1,
                           netns=topology.hv1)
    two = MetadataListener(MetadataApp(CallableLookup(lambda net, src: index.get((net, src)))),
                           NET2, netns=topology.hv2)
    one.start()
    two.start()
    try:
        yield topology
    finally:
        one.stop()
        two.stop()


def in_guest(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    # Debian's Python, with nothing of the test's environment (no venv on its path).
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def read_with_cloudinit(ns: str, *args: str, macs: dict[str, str]) -> dict:
    proc = in_guest(ns, SYSTEM_PYTHON, "-I", str(READER), *args, json.dumps(macs))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def http_status(ns: str, path: str, source: str | None = None) -> tuple[int, str]:
    """(status, body) of a GET from inside the guest, from ``source`` if given."""
    code = (
        "import sys, http.client\n"
        "src = sys.argv[2] or None\n"
        "c = http.client.HTTPConnection('169.254.169.254', 80, timeout=10,"
        " source_address=(src, 0) if src else None)\n"
        "c.request('GET', sys.argv[1])\n"
        "r = c.getresponse()\n"
        "print(r.status)\n"
        "sys.stdout.write(r.read().decode())\n"
    )
    proc = in_guest(ns, SYSTEM_PYTHON, "-I", "-c", code, path, source or "")
    assert proc.returncode == 0, proc.stderr
    status, _, body = proc.stdout.partition("\n")
    return int(status), body


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def check_common(found: dict, desc: InstanceDescription, key: str | None) -> None:
    """What both readers must find of ``desc``."""
    assert "error" not in found, found
    md = found["metadata"]
    assert md["uuid"] == desc.uuid
    assert md["instance-id"] == desc.uuid  # cloud-init's own copy of the required key
    assert md["hostname"] == md["local-hostname"] == desc.hostname
    assert md["meta"] == dict(desc.metadata)
    assert md["project_id"] == desc.project_id
    assert found["random_seed_len"] == 512
    assert found["ssh_keys"] == ([key] if key else [])
    assert found["vendordata"] == dict(desc.vendor_data)
    assert found["vendordata2"] == {"static": dict(desc.vendor_data)}
    port = desc.ports[0]
    links = found["networkdata"]["links"]
    assert [(k["ethernet_mac_address"], k["mtu"]) for k in links] == [(port.mac_address, 1450)]
    net = found["networkdata"]["networks"][0]
    assert (net["ip_address"], net["network_id"]) == (port.fixed_ips[0].ip_address,
                                                       port.network_id)
    # cloud-init turns it into its own network configuration of the guest's NIC
    config = found["network_config"]["config"]
    physical = [c for c in config if c["type"] == "physical"]
    assert physical[0]["name"] == "eth0" and physical[0]["mtu"] == 1450
    assert physical[0]["subnets"][0]["address"] == port.fixed_ips[0].ip_address
    assert physical[0]["subnets"][0]["routes"] == [
        {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"}]
    assert {"type": "nameserver", "address": "10.0.0.2"} in config


def test_cloudinit_reads_the_metadata_service(listeners: Topology) -> None:
    found = read_with_cloudinit(listeners.guests["a"], "http", "http://169.254.169.254",
                                macs={"fa:16:3e:00:00:0a": "eth0"})
    check_common(found, A, KEY_A)
    assert found["selected_version"] == "2018-08-27"  # the newest cloud-init knows
    assert found["userdata"] == b64(USER_DATA_A)
    assert found["ec2_user_data"] == b64(USER_DATA_A)
    ec2 = found["ec2"]
    assert ec2["instance-id"] == A.ec2_instance_id
    assert ec2["hostname"] == ec2["local-hostname"] == "vm-a"
    assert ec2["local-ipv4"] == "10.0.0.5" and ec2["public-ipv4"] == "203.0.113.10"
    assert ec2["public-keys"] == {"key-a": KEY_A}
    assert ec2["placement"] == {"availability-zone": "nova"}
    assert ec2["block-device-mapping"] == {"ami": "vda", "root": "/dev/vda"}
    assert ec2["instance-type"] == "m1.tiny" and ec2["ami-id"] == A.ec2_ami_id


def test_each_guest_reads_only_its_own(listeners: Topology) -> None:
    """B (same network as A) and C (A's address on another network) each read their own
    instance; an address no port holds reads nothing."""
    found_b = read_with_cloudinit(listeners.guests["b"], "http", "http://169.254.169.254",
                                  macs={"fa:16:3e:00:00:0b": "eth0"})
    check_common(found_b, B, KEY_B)
    assert found_b["userdata"] == ""  # B has none (cloud-init's default)
    found_c = read_with_cloudinit(listeners.guests["c"], "http", "http://169.254.169.254",
                                  macs={"fa:16:3e:00:00:0c": "eth0"})
    check_common(found_c, C, None)
    assert found_c["metadata"]["uuid"] != A.uuid

    # B's port takes an address it does not own: nothing is answered from it.
    ns_b = listeners.guests["b"]
    ip("-n", ns_b, "addr", "add", "10.0.0.7/24", "dev", "eth0")
    for path in ("/openstack/latest/meta_data.json", "/latest/meta-data/", "/openstack", "/"):
        status, body = http_status(ns_b, path, source="10.0.0.7")
        assert status == 404, (path, body)
        assert A.uuid not in body and B.uuid not in body
    assert http_status(ns_b, "/openstack/latest/meta_data.json")[0] == 200  # its own: yes

    # With only the address it does not own, cloud-init finds no metadata at all.
    ip("-n", ns_b, "addr", "del", "10.0.0.6/24", "dev", "eth0")
    failed = read_with_cloudinit(ns_b, "http", "http://169.254.169.254",
                                 macs={"fa:16:3e:00:00:0b": "eth0"})
    assert failed.get("error") == "NonReadable", failed


def test_cloudinit_reads_the_config_drive(tmp_path: Path) -> None:
    if shutil.which("xorriso") is None:
        pytest.fail("xorriso is not installed (appliance/setup.sh installs it)")
    iso = configdrive.build(A, tmp_path / "disk.config")
    assert iso.stat().st_mode & 0o777 == 0o600
    work = tmp_path / "extracted"
    work.mkdir()
    proc = subprocess.run([SYSTEM_PYTHON, "-I", str(READER), "drive", str(iso), str(work),
                           json.dumps({"fa:16:3e:00:00:0a": "eth0"})],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found.get("label_matches") == [str(iso)], found
    check_common(found, A, KEY_A)
    assert found["version"] == 2
    assert found["userdata"] == b64(USER_DATA_A)
    ec2 = found["ec2"]  # the drive's ec2/latest/meta-data.json, as Nova writes it
    assert ec2["instance-id"] == A.ec2_instance_id
    assert ec2["public-keys"] == {"0": {"openssh-key": KEY_A}}
    assert ec2["placement"] == {"availability-zone": "nova"}


def reachable(ns: str) -> bool:
    """Whether anything answers HTTP on the metadata address, seen from guest ``ns``."""
    code = ("import http.client\n"
            "c = http.client.HTTPConnection('169.254.169.254', 80, timeout=10)\n"
            "c.request('GET', '/openstack')\n"
            "print(c.getresponse().status)\n")
    return in_guest(ns, SYSTEM_PYTHON, "-I", "-c", code).returncode == 0


def test_listeners_follow_the_networks_of_the_host(topology: Topology, tmp_path: Path) -> None:
    instances_file = tmp_path / "instances.json"
    write_instances_file(instances_file, [A, B, C])
    listeners = MetadataListeners(MetadataApp(JsonFileLookup(instances_file)))
    try:
        assert listeners.reconcile({NET1: topology.hv1}) == {}
        assert http_status(topology.guests["a"], "/openstack/latest/meta_data.json")[0] == 200
        assert not reachable(topology.guests["c"])
        failed = listeners.reconcile({NET1: topology.hv1, NET2: topology.hv2,
                                      "net-x": "haven-t-md-no-such-namespace"})
        assert list(failed) == ["net-x"] and isinstance(failed["net-x"], ListenError)
        status, body = http_status(topology.guests["c"], "/openstack/latest/meta_data.json")
        assert status == 200 and json.loads(body)["uuid"] == C.uuid
        assert listeners.reconcile({NET2: topology.hv2}) == {}
        assert not reachable(topology.guests["a"])
        assert reachable(topology.guests["c"])
    finally:
        listeners.stop()
    assert not reachable(topology.guests["c"])

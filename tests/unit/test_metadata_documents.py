"""The metadata documents have Nova's shapes (keys, order, version gates, listings).

The expected values are written out from Nova's ``nova/api/metadata/base.py``
(``_metadata_as_json``, ``_handle_version``, ``get_ec2_metadata``,
``ec2_md_print``, ``metadata_for_config_drive``) and ``nova/virt/netutils.py``
(``get_network_metadata``), for the same inputs.
"""

from __future__ import annotations

import base64
import json

import pytest

from core.compute.metadata import configdrive, ec2, openstack, paths
from core.compute.metadata.model import (
    FixedIP,
    InstanceDescription,
    InvalidDescription,
    Keypair,
    Port,
    Route,
    Subnet,
    from_json,
    load_instances,
    sanitize_hostname,
    to_json,
)

UUID = "6f2a9c3e-1b7d-4e5f-9a0b-1c2d3e4f5a6b"
V4 = Subnet(id="s4", cidr="10.0.0.0/24", gateway_ip="10.0.0.1",
            dns_nameservers=("10.0.0.2", "9.9.9.9"),
            host_routes=(Route("192.168.0.0/16", "10.0.0.254"),), enable_dhcp=False)
V6 = Subnet(id="s6", cidr="2001:db8::/64", gateway_ip="2001:db8::1",
            dns_nameservers=("2001:db8::53",), ipv6_address_mode="slaac")
DHCP = Subnet(id="sd", cidr="10.1.0.0/24", gateway_ip="10.1.0.1",
              dns_nameservers=("9.9.9.9",), enable_dhcp=True)
PORT1 = Port(id="11111111-2222-3333-4444-555555555555", mac_address="fa:16:3e:11:11:11",
             network_id="net-1", mtu=1450,
             fixed_ips=(FixedIP("10.0.0.5", V4, floating_ip="203.0.113.7"),
                        FixedIP("2001:db8::5", V6)))
PORT2 = Port(id="66666666-7777-8888-9999-000000000000", mac_address="fa:16:3e:22:22:22",
             network_id="net-2", mtu=1500, vif_type="ovs",
             fixed_ips=(FixedIP("10.1.0.9", DHCP),))
DESC = InstanceDescription(
    uuid=UUID, name="My VM", hostname="my-vm", project_id="proj", ports=(PORT1, PORT2),
    availability_zone="az1", launch_index=2, flavor_name="m1.tiny",
    image_id="0a1b2c3d-0000-4000-8000-000000000000",
    keypairs=(Keypair("mykey", "ssh-ed25519 AAAA mykey"),),
    user_data=b"#!/bin/sh\necho hi\n", metadata={"k": "v"}, security_groups=("default", "web"),
    vendor_data={"static": "ignored?", "a": 1}, dynamic_vendor_data={"dyn": {"x": 1}},
)


def seed(n: int) -> bytes:
    return b"\x01" * n


def test_meta_data_keys_and_version_gates() -> None:
    latest = openstack.meta_data(DESC, openstack.resolve_version("latest"), seed)
    assert list(latest) == ["uuid", "meta", "public_keys", "keys", "hostname", "name",
                            "launch_index", "availability_zone", "random_seed", "project_id",
                            "devices", "dedicated_cpus"]
    assert latest["public_keys"] == {"mykey": "ssh-ed25519 AAAA mykey"}
    assert latest["keys"] == [{"name": "mykey", "type": "ssh", "data": "ssh-ed25519 AAAA mykey"}]
    assert (latest["hostname"], latest["name"], latest["launch_index"]) == ("my-vm", "My VM", 2)
    assert base64.b64decode(latest["random_seed"]) == b"\x01" * 512
    folsom = openstack.meta_data(DESC, openstack.FOLSOM, seed)
    assert list(folsom) == ["uuid", "meta", "public_keys", "keys", "hostname", "name",
                            "launch_index", "availability_zone"]
    liberty = openstack.meta_data(DESC, openstack.LIBERTY, seed)
    assert "project_id" in liberty and "devices" not in liberty
    bare = InstanceDescription(uuid=UUID, name="n", hostname="n", project_id="p", ports=())
    assert "meta" not in openstack.meta_data(bare, openstack.FOLSOM)
    assert "public_keys" not in openstack.meta_data(bare, openstack.FOLSOM)


def test_network_data_as_nova_writes_it() -> None:
    assert openstack.network_data(DESC) == {
        "links": [
            {"id": "tap11111111-22", "vif_id": PORT1.id, "type": "bridge", "mtu": 1450,
             "ethernet_mac_address": "fa:16:3e:11:11:11"},
            {"id": "tap66666666-77", "vif_id": PORT2.id, "type": "ovs", "mtu": 1500,
             "ethernet_mac_address": "fa:16:3e:22:22:22"},
        ],
        "networks": [
            {"id": "network0", "type": "ipv4", "link": "tap11111111-22",
             "ip_address": "10.0.0.5", "netmask": "255.255.255.0",
             "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"},
                        {"network": "192.168.0.0", "netmask": "255.255.0.0",
                         "gateway": "10.0.0.254"}],
             "network_id": "net-1",
             "services": [{"type": "dns", "address": "10.0.0.2"},
                          {"type": "dns", "address": "9.9.9.9"}]},
            {"id": "network1", "type": "ipv6_slaac", "link": "tap11111111-22",
             "ip_address": "2001:db8::5", "netmask": "ffff:ffff:ffff:ffff::",
             "routes": [{"network": "::", "netmask": "::", "gateway": "2001:db8::1"}],
             "network_id": "net-1",
             "services": [{"type": "dns", "address": "2001:db8::53"}]},
            {"id": "network2", "type": "ipv4_dhcp", "link": "tap66666666-77",
             "network_id": "net-2"},
        ],
        "services": [{"type": "dns", "address": "10.0.0.2"},
                     {"type": "dns", "address": "9.9.9.9"},
                     {"type": "dns", "address": "2001:db8::53"}],
    }


def test_network_data_skips_a_port_without_addresses_and_odd_vif_types() -> None:
    bare = Port(id="p", mac_address="fa:16:3e:00:00:01", network_id="n", fixed_ips=())
    odd = Port(id="q" * 36, mac_address="fa:16:3e:00:00:02", network_id="n",
               fixed_ips=(FixedIP("10.0.0.9", V4),), vif_type="macvtap", devname="tapq")
    desc = InstanceDescription(uuid=UUID, name="n", hostname="n", project_id="p",
                               ports=(bare, odd))
    doc = openstack.network_data(desc)
    assert [(x["id"], x["type"]) for x in doc["links"]] == [("tapq", "phy")]
    assert doc["networks"][0]["id"] == "network0"


def test_vendor_data() -> None:
    assert openstack.vendor_data(DESC) == {"static": "ignored?", "a": 1}
    assert openstack.vendor_data2(DESC) == {"static": {"static": "ignored?", "a": 1},
                                            "dyn": {"x": 1}}
    bare = InstanceDescription(uuid=UUID, name="n", hostname="n", project_id="p", ports=())
    assert openstack.vendor_data(bare) == {}
    assert openstack.vendor_data2(bare) == {"static": {}}


def body(path: str, desc: InstanceDescription = DESC) -> str:
    return paths.resolve(desc, path, today=lambda: "2026-01-01").body.decode()


def test_openstack_listings() -> None:
    assert body("/openstack").split("\n") == [*openstack.VERSIONS, "latest"]
    hidden = paths.resolve(DESC, "/openstack", today=lambda: "2019-01-01").body.decode()
    assert hidden.split("\n")[-3:] == ["2017-02-22", "2018-08-27", "latest"]
    assert body("/openstack/latest/") == ("meta_data.json\nuser_data\npassword\n"
                                          "vendor_data.json\nnetwork_data.json\n"
                                          "vendor_data2.json")
    assert body("/openstack/2012-08-10") == "meta_data.json\nuser_data"
    no_ud = InstanceDescription(uuid=UUID, name="n", hostname="n", project_id="p", ports=())
    assert "user_data" not in body("/openstack/latest", no_ud)
    with pytest.raises(paths.NotFound):
        paths.resolve(no_ud, "/openstack/latest/user_data")


@pytest.mark.parametrize("path", [
    "/openstack/2012-08-10/vendor_data.json", "/openstack/2016-06-30/vendor_data2.json",
    "/openstack/2012-08-10/password", "/openstack/1999-01-01/meta_data.json",
    "/openstack/latest/nothing", "/openstack/content/0000", "/openstack/latest/meta_data.json/x",
    "/latest/meta-data/nothing", "/latest/meta-data/hostname/x", "/2099-01-01/meta-data/",
    "/1.0/meta-data/placement/availability-zone",
])
def test_unknown_paths(path: str) -> None:
    with pytest.raises(paths.NotFound):
        paths.resolve(DESC, path)


def test_openstack_documents_by_path() -> None:
    md = paths.resolve(DESC, "/openstack/latest/meta_data.json")
    assert md.content_type == "application/json"
    assert json.loads(md.body)["uuid"] == UUID
    assert body("/openstack/latest/user_data") == "#!/bin/sh\necho hi\n"
    assert body("/openstack/latest/password") == ""
    assert json.loads(body("/openstack/2015-10-15/network_data.json"))["links"][0]["mtu"] == 1450
    # .. and repeated slashes are normalised as Nova normalises them
    assert json.loads(body("//openstack/latest/../latest/meta_data.json"))["uuid"] == UUID


def test_ec2_tree_and_listings() -> None:
    assert body("/").split("\n") == [*ec2.VERSIONS, "latest"]
    assert body("/latest") == "meta-data/\nuser-data"
    assert body("/latest/meta-data/").split("\n") == [
        "ami-id", "ami-launch-index", "ami-manifest-path", "block-device-mapping/", "hostname",
        "instance-action", "instance-id", "instance-type", "local-hostname", "local-ipv4",
        "placement/", "public-hostname", "public-ipv4", "public-keys/", "reservation-id",
        "security-groups"]
    assert body("/ec2/latest/meta-data/public-keys/") == "0=mykey"
    assert body("/latest/meta-data/public-keys/0/") == "openssh-key"
    assert body("/latest/meta-data/public-keys/0/openssh-key") == "ssh-ed25519 AAAA mykey"
    assert body("/latest/meta-data/instance-id") == "i-6f2a9c3e"
    assert body("/latest/meta-data/ami-id") == "ami-0a1b2c3d"
    assert body("/latest/meta-data/ami-launch-index") == "2"
    assert body("/latest/meta-data/local-ipv4") == "10.0.0.5"
    assert body("/latest/meta-data/public-ipv4") == "203.0.113.7"
    assert body("/latest/meta-data/security-groups") == "default\nweb"
    assert body("/latest/meta-data/placement/availability-zone") == "az1"
    assert body("/latest/meta-data/block-device-mapping/") == "ami\nroot"
    assert body("/latest/meta-data/block-device-mapping/root") == "/dev/vda"
    assert body("/latest/user-data") == "#!/bin/sh\necho hi\n"
    assert body("/1.0/meta-data/").split("\n") == [
        "ami-id", "ami-launch-index", "ami-manifest-path", "hostname", "instance-id",
        "local-ipv4", "public-keys/", "reservation-id", "security-groups"]


def test_config_drive_files_are_novas_set() -> None:
    names = {path for path, _ in configdrive.files(DESC, seed)}
    expected = set()
    for v in [*ec2.VERSIONS, "latest"]:
        expected |= {f"ec2/{v}/meta-data.json", f"ec2/{v}/user-data"}
    for v in [*openstack.VERSIONS, "latest"]:
        expected |= {f"openstack/{v}/meta_data.json", f"openstack/{v}/user_data"}
        real = openstack.resolve_version(v)
        if real >= openstack.HAVANA:
            expected.add(f"openstack/{v}/vendor_data.json")
        if real >= openstack.LIBERTY:
            expected.add(f"openstack/{v}/network_data.json")
        if real >= openstack.NEWTON_TWO:
            expected.add(f"openstack/{v}/vendor_data2.json")
    assert names == expected
    drive = dict(configdrive.files(DESC, seed))
    # Nova's drive: the EC2 tree as JSON, public-keys without the "0=name" label
    ec2_md = json.loads(drive["ec2/latest/meta-data.json"])
    assert ec2_md["public-keys"] == {"0": {"openssh-key": "ssh-ed25519 AAAA mykey"}}
    assert ec2_md["ami-launch-index"] == 2
    assert drive["openstack/latest/user_data"] == DESC.user_data


def test_json_form_round_trips_and_names_bad_fields() -> None:
    assert from_json(json.loads(json.dumps(to_json(DESC)))) == DESC
    doc = to_json(DESC)
    doc["ports"][0]["fixed_ips"][0]["subnet"]["cidr"] = "10.0.0/33"
    with pytest.raises(InvalidDescription, match=r"ports\[0\]\.fixed_ips\[0\]\.subnet\.cidr"):
        from_json(doc)
    doc = to_json(DESC)
    doc["surprise"] = 1
    with pytest.raises(InvalidDescription, match="surprise: unknown field"):
        from_json(doc)
    doc = to_json(DESC)
    doc["launch_index"] = True
    with pytest.raises(InvalidDescription, match="launch_index"):
        from_json(doc)
    doc = to_json(DESC)
    doc["user_data"] = "not base64!"
    with pytest.raises(InvalidDescription, match="user_data"):
        from_json(doc)
    with pytest.raises(InvalidDescription, match=r"instances\[0\]\.uuid"):
        load_instances({"format": "haven-metadata/1", "instances": [{**to_json(DESC),
                                                                     "uuid": "x"}]})
    with pytest.raises(InvalidDescription, match="format"):
        load_instances({"instances": []})


def test_hostname_like_nova() -> None:
    assert sanitize_hostname("My VM_1 (test).example") == "my-vm-1-test-example"
    assert sanitize_hostname("Café ☕") == "café"
    assert sanitize_hostname("...", "Server-1") == "Server-1"
    assert sanitize_hostname("a" * 80) == "a" * 63

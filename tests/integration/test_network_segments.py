"""Network segments through the network API (SQLite and a real MariaDB): provider
attributes for admins only, VNIs and VLAN ids allocated from the configured ranges
without ever handing one out twice, freed on delete, 503 when exhausted, the MTU of
the encapsulation, port binding attributes; and the stock ``openstack`` CLI."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLIENT_ON_SQLITE, Services
from tests.integration.segments_cloud import segments_cloud
from tests.integration.test_quotas import openstack_cli

PROVIDER = ("provider:network_type", "provider:physical_network", "provider:segmentation_id")


@pytest.fixture
def cloud(tmp_path: Path, db_url: str) -> Iterator[Services]:
    with segments_cloud(tmp_path, db_url, vni_ranges=["100:139"],
                        network_vlan_ranges=["physnet1:100:199", "physnet2"]) as services:
        yield services


def create(services: Services, token: str | None = None, **attrs: Any) -> Any:
    return services.call("POST", "network", "/v2.0/networks", token,
                         json={"network": {"name": "n", **attrs}})


def segment(services: Services, net_id: str) -> tuple[Any, ...]:
    shown = services.call("GET", "network", f"/v2.0/networks/{net_id}").json()["network"]
    return (*tuple(shown[k] for k in PROVIDER), shown["mtu"])


def test_a_tenant_network_is_vxlan_seen_by_admins_only(cloud: Services) -> None:
    member = cloud.member("sa", "sa-user")
    made = create(cloud, member)
    assert made.status_code == 201, made.text
    net = made.json()["network"]
    assert not set(PROVIDER) & set(net), net  # Neutron: not the member's to see
    assert net["mtu"] == 1450  # 1500 underlay less 50 for VXLAN over IPv4
    listed = cloud.call("GET", "network", "/v2.0/networks", member).json()["networks"]
    assert all(not set(PROVIDER) & set(n) for n in listed)
    kind, physnet, vni, mtu = segment(cloud, net["id"])
    assert (kind, physnet, mtu) == ("vxlan", None, 1450) and 100 <= vni <= 139
    # the provider network bootstrap made is flat, with its segment
    provider = cloud.call("GET", "network", "/v2.0/networks?name=provider").json()
    assert segment(cloud, provider["networks"][0]["id"]) == ("flat", "provider", None, 1500)


def test_provider_attributes_bad_input_and_conflicts(cloud: Services) -> None:
    before = len(cloud.call("GET", "network", "/v2.0/networks").json()["networks"])
    vlan = create(cloud, **{"provider:network_type": "vlan",
                            "provider:physical_network": "physnet1",
                            "provider:segmentation_id": 150})
    assert vlan.status_code == 201, vlan.text
    assert segment(cloud, vlan.json()["network"]["id"]) == ("vlan", "physnet1", 150, 1500)
    flat = create(cloud, **{"provider:network_type": "flat",
                            "provider:physical_network": "physnet2"})
    assert flat.status_code == 201, flat.text
    vxlan = create(cloud, **{"provider:network_type": "vxlan",
                             "provider:segmentation_id": 5000})  # outside the ranges: an
    assert vxlan.status_code == 201, vxlan.text                   # admin may
    refused = [
        ({"provider:network_type": "gre"}, 400, "provider:network_type"),
        ({"provider:network_type": "flat"}, 400, "provider:physical_network"),
        ({"provider:network_type": "flat", "provider:physical_network": "physnet2"}, 409,
         "provider:physical_network"),
        ({"provider:network_type": "flat", "provider:physical_network": "physnet1",
          "provider:segmentation_id": 3}, 400, "provider:segmentation_id"),
        ({"provider:network_type": "vlan", "provider:physical_network": "physnet1",
          "provider:segmentation_id": 150}, 409, "provider:segmentation_id"),
        ({"provider:network_type": "vlan", "provider:physical_network": "physnet1",
          "provider:segmentation_id": 4095}, 400, "provider:segmentation_id"),
        ({"provider:network_type": "vlan", "provider:physical_network": "physnet9"}, 400,
         "provider:physical_network"),
        ({"provider:network_type": "vxlan", "provider:segmentation_id": 5000}, 409,
         "provider:segmentation_id"),
        ({"provider:network_type": "vxlan", "provider:segmentation_id": 2**24}, 400,
         "provider:segmentation_id"),
        ({"provider:network_type": "vxlan", "provider:physical_network": "physnet1"}, 400,
         "provider:physical_network"),
        ({"provider:segmentation_id": 7}, 400, "provider:network_type"),
        ({"provider:segmentation_id": "seven", "provider:network_type": "vxlan"}, 400,
         "provider:segmentation_id"),
        ({"provider:colour": "blue"}, 400, "provider:colour"),
        ({"mtu": 1451}, 400, "mtu"),  # more than VXLAN over a 1500 underlay carries
    ]
    for attrs, status, name in refused:
        resp = create(cloud, **attrs)
        assert resp.status_code == status, (attrs, resp.text)
        assert name in resp.json()["NeutronError"]["message"], (attrs, resp.text)
    after = cloud.call("GET", "network", "/v2.0/networks").json()["networks"]
    assert len(after) == before + 3  # nothing of a refused create remains
    smaller = create(cloud, mtu=1400)
    assert smaller.status_code == 201 and smaller.json()["network"]["mtu"] == 1400
    # updating provider attributes: 403 for a member, 400 (not supported) for an admin
    member = cloud.member("sp", "sp-user")
    own = create(cloud, member).json()["network"]["id"]
    change = {"network": {"provider:segmentation_id": 101}}
    resp = cloud.call("PUT", "network", f"/v2.0/networks/{own}", member, json=change)
    assert resp.status_code == 403, resp.text
    resp = cloud.call("PUT", "network", f"/v2.0/networks/{own}", json=change)
    assert resp.status_code == 400 and "provider:segmentation_id" in resp.text
    assert create(cloud, member, **{"provider:network_type": "vxlan"}).status_code == 403


def test_concurrent_creates_never_share_a_vni_exhaustion_is_503_delete_frees(
        cloud: Services) -> None:
    members = [cloud.member(f"c{i}", f"c{i}-user") for i in range(4)]

    def make(i: int) -> tuple[int, str | None]:
        resp = create(cloud, members[i % 4])
        return resp.status_code, resp.json()["network"]["id"] if resp.ok else None

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(make, range(40)))  # the range holds 40
    assert Counter(status for status, _ in results) == Counter({201: 40}), results
    vnis = [segment(cloud, net_id)[2] for _, net_id in results]
    assert sorted(vnis) == list(range(100, 140))
    full = create(cloud, members[0])
    assert full.status_code == 503, full.text
    assert full.json()["NeutronError"]["type"] == "NoNetworkAvailable"
    # a flat physical network, raced for: one network gets it
    with ThreadPoolExecutor(6) as pool:
        flats = list(pool.map(lambda _: create(cloud, **{
            "provider:network_type": "flat",
            "provider:physical_network": "physnet2"}).status_code, range(6)))
    assert Counter(flats) == Counter({201: 1, 409: 5}), flats
    freed_net = results[7][1]
    assert cloud.call("DELETE", "network", f"/v2.0/networks/{freed_net}",
                      members[7 % 4]).status_code == 204
    again = create(cloud, members[0])
    assert again.status_code == 201, again.text
    assert segment(cloud, again.json()["network"]["id"])[2] == vnis[7]


def test_binding_attributes_are_the_admins(cloud: Services) -> None:
    member = cloud.member("bp", "bp-user")
    net_id = create(cloud, member).json()["network"]["id"]
    mine = cloud.call("POST", "network", "/v2.0/ports", member,
                      json={"port": {"network_id": net_id, "binding:host_id": "hv1"}})
    assert mine.status_code == 403, mine.text
    mine = cloud.call("POST", "network", "/v2.0/ports", member,
                      json={"port": {"network_id": net_id}})
    port_id = mine.json()["port"]["id"]
    bound = cloud.call("PUT", "network", f"/v2.0/ports/{port_id}",
                       json={"port": {"binding:host_id": "hv1"}})
    assert bound.status_code == 200, bound.text
    assert (bound.json()["port"]["binding:host_id"],
            bound.json()["port"]["binding:vif_type"]) == ("hv1", "tap")
    seen = cloud.call("GET", "network", f"/v2.0/ports/{port_id}", member).json()["port"]
    assert "binding:host_id" not in seen and "binding:vif_type" not in seen
    assert seen["binding:vnic_type"] == "normal"
    assert cloud.call("GET", "network", "/v2.0/ports?binding:host_id=hv1",
                      member).status_code == 403
    on_hv1 = cloud.call("GET", "network", "/v2.0/ports?binding:host_id=hv1").json()["ports"]
    assert [p["id"] for p in on_hv1] == [port_id]
    assert cloud.call("GET", "network", "/v2.0/ports?binding:host_id=hv2").json()[
        "ports"] == []


@CLIENT_ON_SQLITE
def test_stock_openstack_cli_creates_provider_networks(cloud: Services) -> None:
    made = openstack_cli(cloud, "network", "create", "--provider-network-type", "vxlan",
                         "--provider-segment", "4242", "-f", "json", "cli-net")
    assert made.returncode == 0, made.stderr
    shown = json.loads(made.stdout)
    assert (shown["provider:network_type"], shown["provider:segmentation_id"],
            shown["mtu"]) == ("vxlan", 4242, 1450), shown
    made = openstack_cli(cloud, "network", "create", "--provider-network-type", "vlan",
                         "--provider-physical-network", "physnet1", "-f", "json", "cli-vlan")
    assert made.returncode == 0, made.stderr
    shown = json.loads(made.stdout)
    assert shown["provider:physical_network"] == "physnet1"
    assert 100 <= shown["provider:segmentation_id"] <= 199
    taken = openstack_cli(cloud, "network", "create", "--provider-network-type", "vxlan",
                          "--provider-segment", "4242", "again")
    assert taken.returncode != 0 and "4242" in taken.stderr, taken.stderr
    cloud.member("cp", "cp-user", password="pw")
    refused = openstack_cli(cloud, "network", "create", "--provider-network-type", "vxlan",
                            "x", user="cp-user", password="pw", project="cp")
    assert refused.returncode != 0 and "403" in refused.stderr, refused.stderr


def test_tenant_networks_on_vlan_when_configured(tmp_path: Path, db_url: str) -> None:
    with segments_cloud(tmp_path, db_url, tenant_network_type="vlan",
                        network_vlan_ranges=["physnet1:100:101", "physnet2"]) as cloud:
        member = cloud.member("tv", "tv-user")
        made = [create(cloud, member) for _ in range(3)]
        assert [r.status_code for r in made] == [201, 201, 503], [r.text for r in made]
        segments = sorted(segment(cloud, r.json()["network"]["id"]) for r in made[:2])
        assert segments == [("vlan", "physnet1", 100, 1500), ("vlan", "physnet1", 101, 1500)]


def test_networks_made_before_segments_are_adopted_at_bootstrap(cloud: Services) -> None:
    """A tenant network of an older Haven (flat on no physical network: no data path
    at all) becomes a tenant VXLAN network; one claiming the provider's physical
    network is left without a segment (carried by no hypervisor), never shares it."""
    from core.network.bootstrap import ensure_provider_network
    from core.network.networks import create_network_row

    legacy = cloud.db.run_in_transaction(lambda s: (
        create_network_row(s, "old-tenant", "p1", False, physical=None).id,
        create_network_row(s, "old-flat", "p1", False, physical="provider").id))
    cloud.db.run_in_transaction(lambda s: ensure_provider_network(s, cloud.cfg, "unused"))
    kind, physnet, vni, mtu = segment(cloud, legacy[0])
    assert (kind, physnet, mtu) == ("vxlan", None, 1450) and 100 <= vni <= 139
    assert segment(cloud, legacy[1]) == ("flat", "provider", None, 1500)  # as stored
    with cloud.db.session() as s:
        from core.network.segments import segment_of
        assert segment_of(s, legacy[1]) is None
    cloud.db.run_in_transaction(lambda s: ensure_provider_network(s, cloud.cfg, "unused"))
    assert segment(cloud, legacy[0])[2] == vni  # idempotent

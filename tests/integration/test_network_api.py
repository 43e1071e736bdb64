"""The network API: networks, subnets, ports, and IPAM that never hands out an
address twice, also under concurrent creates (SQLite and a real MariaDB)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.conftest import Services


def network_with_subnet(services: Services, cidr: str, token: str | None = None,
                        **subnet: object) -> tuple[str, str]:
    net = services.call("POST", "network", "/v2.0/networks", token,
                        json={"network": {"name": f"net-{cidr}"}})
    assert net.status_code == 201, net.text
    net_id = net.json()["network"]["id"]
    sub = services.call("POST", "network", "/v2.0/subnets", token, json={"subnet": {
        "network_id": net_id, "cidr": cidr, "ip_version": 4, **subnet}})
    assert sub.status_code == 201, sub.text
    return net_id, sub.json()["subnet"]["id"]


def test_concurrent_port_creates_never_share_an_address(services: Services) -> None:
    net_id, _ = network_with_subnet(services, "10.77.0.0/26")  # 61 usable + gateway

    def create(i: int) -> tuple[int, str | None]:
        resp = services.call("POST", "network", "/v2.0/ports",
                             json={"port": {"network_id": net_id, "name": f"p{i}"}})
        ips = resp.json()["port"]["fixed_ips"] if resp.status_code == 201 else []
        return resp.status_code, ips[0]["ip_address"] if ips else None

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(create, range(61)))
    assert [status for status, _ in results] == [201] * 61
    addresses = [ip for _, ip in results]
    assert len(set(addresses)) == 61
    assert "10.77.0.1" not in addresses  # the gateway
    # the pool is now exhausted: a clean 409, not a duplicate
    full = services.call("POST", "network", "/v2.0/ports",
                         json={"port": {"network_id": net_id}})
    assert full.status_code == 409 and "No more IP addresses" in full.text


def test_requested_address_and_its_conflict(services: Services) -> None:
    net_id, sub_id = network_with_subnet(services, "10.78.0.0/24")
    body = {"port": {"network_id": net_id, "fixed_ips": [{"ip_address": "10.78.0.50"}]}}
    first = services.call("POST", "network", "/v2.0/ports", json=body)
    assert first.status_code == 201
    assert first.json()["port"]["fixed_ips"] == [{"subnet_id": sub_id,
                                                  "ip_address": "10.78.0.50"}]
    again = services.call("POST", "network", "/v2.0/ports", json=body)
    assert again.status_code == 409
    port_id = first.json()["port"]["id"]
    assert services.call("DELETE", "network", f"/v2.0/ports/{port_id}").status_code == 204
    assert services.call("POST", "network", "/v2.0/ports", json=body).status_code == 201


def test_bad_input_gets_400_naming_the_field(services: Services) -> None:
    net_id, _ = network_with_subnet(services, "10.79.0.0/24")
    cases = [
        ("/v2.0/subnets", {"subnet": {"network_id": net_id, "cidr": "10.79.1.0/33"}}, "cidr"),
        ("/v2.0/subnets", {"subnet": {"network_id": net_id, "cidr": "10.80.0.0/24",
                                      "gateway_ip": "10.1.1.1"}}, "gateway_ip"),
        ("/v2.0/networks", {"network": {"name": 3}}, "name"),
        ("/v2.0/ports", {"port": {"network_id": net_id,
                                  "fixed_ips": [{"ip_address": "nonsense"}]}}, "ip_address"),
    ]
    for path, body, name in cases:
        resp = services.call("POST", "network", path, json=body)
        assert resp.status_code == 400, (body, resp.text)
        assert name in resp.json()["NeutronError"]["message"]


def test_projects_see_their_own_and_shared_networks_only(services: Services) -> None:
    alice = services.member("na", "alice-n")
    bob = services.member("nb", "bob-n")
    net_id, _ = network_with_subnet(services, "10.81.0.0/24", token=alice)
    assert services.call("GET", "network", f"/v2.0/networks/{net_id}", bob).status_code == 404
    names = {n["name"] for n in services.call("GET", "network", "/v2.0/networks",
                                               bob).json()["networks"]}
    assert names == {"provider"}  # the shared provider network, and nothing of alice's
    shared = services.call("POST", "network", "/v2.0/networks", bob,
                           json={"network": {"name": "x", "shared": True}})
    assert shared.status_code == 403

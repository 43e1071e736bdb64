"""Subnet update (``PUT /v2.0/subnets/{id}``) through the real API, SQLite and MariaDB:
what Neutron lets change, its refusals (400, or Neutron's 409, naming the field, nothing
stored changed),
its policy, and the stock ``openstack subnet set``."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import CLIENT_ON_SQLITE, Services
from tests.integration.test_network_api import Caller, network_with_subnet, port_body, provider
from tests.integration.test_routers_api import openstack


def put(services: Services, sub_id: str, token: str | None = None,
        **attrs: object) -> Any:
    return services.call("PUT", "network", f"/v2.0/subnets/{sub_id}", token,
                         json={"subnet": attrs})


def shown(services: Services, sub_id: str) -> dict[str, Any]:
    resp = services.call("GET", "network", f"/v2.0/subnets/{sub_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["subnet"])


def test_the_updatable_attributes_change_and_show(services: Services) -> None:
    owner = Caller(services, "su", "su-member", "member")
    _, sub_id = network_with_subnet(services, "10.60.0.0/24", token=owner.token)
    before = shown(services, sub_id)
    assert before["enable_dhcp"] is True and before["gateway_ip"] == "10.60.0.1"
    resp = put(services, sub_id, owner.token, name="renamed", description="d",
               enable_dhcp=False, gateway_ip="10.60.0.254",
               allocation_pools=[{"start": "10.60.0.100", "end": "10.60.0.200"}])
    assert resp.status_code == 200, resp.text
    after = shown(services, sub_id)
    assert resp.json()["subnet"] == after
    assert (after["name"], after["description"], after["enable_dhcp"], after["gateway_ip"],
            after["allocation_pools"]) == ("renamed", "d", False, "10.60.0.254",
                                           [{"start": "10.60.0.100", "end": "10.60.0.200"}])
    assert after["updated_at"] >= before["updated_at"]
    assert (before["revision_number"], after["revision_number"]) == (0, 1)
    assert after["cidr"] == before["cidr"] and after["created_at"] == before["created_at"]
    # the gateway removed, then DHCP back on; the empty lists Haven shows are accepted
    resp = put(services, sub_id, owner.token, gateway_ip=None, enable_dhcp=True,
               dns_nameservers=[], host_routes=[])
    assert resp.status_code == 200, resp.text
    assert (shown(services, sub_id)["gateway_ip"], shown(services, sub_id)["enable_dhcp"]) == (
        None, True)


def test_refusals_name_the_field_and_change_nothing(services: Services) -> None:
    owner = Caller(services, "sr", "sr-member", "member")
    net_id, sub_id = network_with_subnet(services, "10.61.0.0/24", token=owner.token)
    held = services.call("POST", "network", "/v2.0/ports", owner.token,
                         json=port_body(net_id, fixed_ips=[{"ip_address": "10.61.0.50"}]))
    assert held.status_code == 201, held.text
    before = shown(services, sub_id)
    pool = [{"start": "10.61.0.100", "end": "10.61.0.200"}]
    refused: list[tuple[dict[str, Any], int, str]] = [
        ({"cidr": "10.62.0.0/24"}, 400, "Cannot update read-only attribute cidr"),
        ({"ip_version": 4}, 400, "Cannot update read-only attribute ip_version"),
        ({"network_id": net_id}, 400, "Cannot update read-only attribute network_id"),
        ({"segment_id": None}, 400, "Cannot update read-only attribute segment_id"),
        ({"frobnicate": 1}, 400, "Unrecognized attribute(s) 'frobnicate'"),
        ({"dns_nameservers": ["192.0.2.53"]}, 400, "'dns_nameservers': Haven does not"),
        ({"host_routes": [{"destination": "0.0.0.0/0", "nexthop": "10.61.0.9"}]}, 400,
         "'host_routes': Haven does not"),
        ({"gateway_ip": "10.99.0.1"}, 400, "'gateway_ip'"),
        ({"gateway_ip": "not-an-ip"}, 400, "'gateway_ip'"),
        ({"gateway_ip": "10.61.0.0"}, 400, "network or broadcast"),
        ({"gateway_ip": "10.61.0.255"}, 400, "network or broadcast"),
        ({"gateway_ip": "10.61.0.77"}, 409, "'gateway_ip': Gateway ip 10.61.0.77 conflicts "
         "with allocation pool 10.61.0.2-10.61.0.254."),
        ({"gateway_ip": "10.61.0.50", "allocation_pools": pool}, 409, "in use by port"),
        ({"allocation_pools": [{"start": "10.61.0.0", "end": "10.61.0.9"}]}, 400,
         "'allocation_pools[0]'"),
        ({"allocation_pools": [{"start": "10.61.0.250", "end": "10.61.1.9"}]}, 400,
         "'allocation_pools[0]'"),
        ({"allocation_pools": [{"start": "10.61.0.20", "end": "10.61.0.10"}]}, 400,
         "'allocation_pools[0]'"),
        ({"allocation_pools": [{"start": "10.61.0.1", "end": "10.61.0.9"}]}, 409,
         "'allocation_pools': Gateway ip 10.61.0.1 conflicts with allocation pool "
         "10.61.0.1-10.61.0.9."),
        ({"allocation_pools": [*pool, {"start": "10.61.0.150", "end": "10.61.0.220"}]}, 409,
         "'allocation_pools': Found overlapping allocation pools: 10.61.0.100-10.61.0.200 "
         "10.61.0.150-10.61.0.220 for subnet 10.61.0.0/24."),
        ({"allocation_pools": [*pool, {"start": "10.61.0.210"}]}, 400,
         "'allocation_pools[1]'"),
        ({"allocation_pools": {"start": "10.61.0.210", "end": "10.61.0.220"}}, 400,
         "'allocation_pools'"),
        ({"enable_dhcp": "yes"}, 400, "'enable_dhcp'"),
        ({"name": 7}, 400, "'name'"),
        # a good change in the same body is not half-applied
        ({"name": "half", "cidr": "10.61.0.0/23"}, 400, "read-only attribute cidr"),
    ]
    for attrs, status, says in refused:
        resp = put(services, sub_id, owner.token, **attrs)
        assert resp.status_code == status, (attrs, resp.status_code, resp.text)
        assert "Traceback" not in resp.text
        assert says in resp.json()["NeutronError"]["message"], (attrs, resp.text)
        assert shown(services, sub_id) == before, attrs


def test_the_gateway_a_port_holds_stays_and_held_addresses_outside_a_new_pool_stay(
        services: Services) -> None:
    owner = Caller(services, "sg", "sg-member", "member")
    net_id, sub_id = network_with_subnet(services, "10.63.0.0/24", token=owner.token)
    port = services.call("POST", "network", "/v2.0/ports", json=port_body(
        net_id, fixed_ips=[{"ip_address": "10.63.0.1"}]))  # the admin takes the gateway
    assert port.status_code == 201, port.text
    guest = services.call("POST", "network", "/v2.0/ports", owner.token,
                          json=port_body(net_id)).json()["port"]
    for gateway in ("10.63.0.254", None):
        resp = put(services, sub_id, owner.token, gateway_ip=gateway,
                   allocation_pools=[{"start": "10.63.0.2", "end": "10.63.0.200"}])
        assert resp.status_code == 409, resp.text
        assert "10.63.0.1 already in use" in resp.json()["NeutronError"]["message"]
    assert shown(services, sub_id)["gateway_ip"] == "10.63.0.1"
    # a pool that leaves the guest's address out: the guest keeps it
    address = guest["fixed_ips"][0]["ip_address"]
    last = int(address.rsplit(".", 1)[1])
    start, end = ("10.63.0.2", "10.63.0.2") if last != 2 else ("10.63.0.3", "10.63.0.3")
    resp = put(services, sub_id, owner.token, allocation_pools=[{"start": start, "end": end}])
    assert resp.status_code == 200, resp.text
    kept = services.call("GET", "network", f"/v2.0/ports/{guest['id']}").json()["port"]
    assert kept["fixed_ips"][0]["ip_address"] == address
    # the one address left in the pool goes to the next port, then the pool is full
    nxt = services.call("POST", "network", "/v2.0/ports", owner.token, json=port_body(net_id))
    assert nxt.status_code == 201, nxt.text
    assert nxt.json()["port"]["fixed_ips"][0]["ip_address"] == start
    full = services.call("POST", "network", "/v2.0/ports", owner.token, json=port_body(net_id))
    assert full.status_code == 409, full.text


def test_policy_owner_or_admin_other_projects_get_404_or_403(services: Services) -> None:
    alice = Caller(services, "pa", "pa-member", "member")
    reader = Caller(services, "pa", "pa-reader", "reader", project_id=alice.project_id)
    bob = Caller(services, "pb", "pb-member", "member")
    _, sub_id = network_with_subnet(services, "10.64.0.0/24", token=alice.token)
    before = shown(services, sub_id)
    assert put(services, sub_id, bob.token, name="b").status_code == 404  # not even seen
    denied = put(services, sub_id, reader.token, name="r")
    assert denied.status_code == 403, denied.text
    assert denied.json()["NeutronError"]["type"] == "PolicyNotAuthorized"
    assert put(services, sub_id, alice.unscoped, name="u").status_code == 403
    assert shown(services, sub_id) == before
    # the shared provider network's subnet: everyone sees it, only the admin changes it
    _, psub = provider(services)
    pbefore = shown(services, psub)
    assert put(services, psub, bob.token, enable_dhcp=False).status_code == 403
    assert shown(services, psub) == pbefore
    assert put(services, sub_id, name="by-admin").status_code == 200  # the admin may
    assert shown(services, sub_id)["name"] == "by-admin"
    assert put(services, "no-such-subnet", alice.token, name="x").status_code == 404


@CLIENT_ON_SQLITE
def test_stock_cli_subnet_set(services: Services) -> None:
    services.member("sncli", "sncli-user")
    me = {"user": "sncli-user", "password": "pw", "project": "sncli"}

    def show() -> Any:
        return json.loads(openstack(services, "subnet", "show", "sub1", "-f", "json", **me))

    openstack(services, "network", "create", "net1", **me)
    openstack(services, "subnet", "create", "--network", "net1", "--subnet-range",
              "10.70.0.0/24", "sub1", **me)
    assert show()["enable_dhcp"] is True
    openstack(services, "subnet", "set", "--no-dhcp", "sub1", **me)
    assert show()["enable_dhcp"] is False
    openstack(services, "subnet", "set", "--dhcp", "--name", "sub2", "--gateway", "10.70.0.254",
              "--no-allocation-pool", "--allocation-pool", "start=10.70.0.10,end=10.70.0.99",
              "sub1", **me)
    me_show = json.loads(openstack(services, "subnet", "show", "sub2", "-f", "json", **me))
    assert (me_show["enable_dhcp"], me_show["gateway_ip"]) == (True, "10.70.0.254")
    pools = me_show["allocation_pools"]
    assert pools in ([{"start": "10.70.0.10", "end": "10.70.0.99"}], "10.70.0.10-10.70.0.99")
    openstack(services, "subnet", "set", "--gateway", "none", "sub2", **me)
    assert json.loads(openstack(services, "subnet", "show", "sub2", "-f", "json",
                                **me))["gateway_ip"] is None

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


# ---- policy (Neutron's defaults): real users and roles made through the identity API ----

class Caller:
    """A user with one role in one project, made through the identity API."""

    def __init__(self, services: Services, project: str, user: str, role: str,
                 project_id: str | None = None) -> None:
        if project_id is None:
            made = services.call("POST", "identity", "/v3/projects",
                                 json={"project": {"name": project}})
            assert made.status_code == 201, made.text
            project_id = made.json()["project"]["id"]
        self.project_id = project_id
        made = services.call("POST", "identity", "/v3/users",
                             json={"user": {"name": user, "password": "pw"}})
        assert made.status_code == 201, made.text
        self.user_id = made.json()["user"]["id"]
        role_id = services.call("GET", "identity",
                                f"/v3/roles?name={role}").json()["roles"][0]["id"]
        granted = services.call("PUT", "identity",
                                f"/v3/projects/{project_id}/users/{self.user_id}/roles/{role_id}")
        assert granted.status_code == 204, granted.text
        self.token = services.token(user, "pw", project)
        unscoped = services.call("POST", "identity", "/v3/auth/tokens", json={"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": "pw"}}}}})
        assert unscoped.status_code == 201, unscoped.text
        assert "project" not in unscoped.json()["token"]
        self.unscoped = unscoped.headers["X-Subject-Token"]


def provider(services: Services) -> tuple[str, str]:
    """The shared provider network bootstrap made, and its subnet."""
    nets = services.call("GET", "network", "/v2.0/networks?name=provider").json()["networks"]
    return nets[0]["id"], nets[0]["subnets"][0]


def port_body(net_id: str, **extra: object) -> dict[str, object]:
    return {"port": {"network_id": net_id, **extra}}


def test_reader_reads_but_never_writes(services: Services) -> None:
    """Bug: a reader could create ports (and networks) like a member."""
    member = Caller(services, "rp", "rp-member", "member")
    reader = Caller(services, "rp", "rp-reader", "reader", project_id=member.project_id)
    net_id, sub_id = network_with_subnet(services, "10.90.0.0/24", token=member.token)
    port = services.call("POST", "network", "/v2.0/ports", member.token, json=port_body(net_id))
    assert port.status_code == 201, port.text
    port_id = port.json()["port"]["id"]
    for path in (f"/v2.0/networks/{net_id}", f"/v2.0/subnets/{sub_id}", f"/v2.0/ports/{port_id}"):
        assert services.call("GET", "network", path, reader.token).status_code == 200, path
    assert [p["id"] for p in services.call("GET", "network", "/v2.0/ports",
                                           reader.token).json()["ports"]] == [port_id]
    pnet, _ = provider(services)
    writes = [
        ("POST", "/v2.0/networks", {"network": {"name": "r"}}),
        ("POST", "/v2.0/subnets", {"subnet": {"network_id": net_id, "cidr": "10.91.0.0/24"}}),
        ("POST", "/v2.0/ports", port_body(net_id)),
        ("POST", "/v2.0/ports", port_body(pnet)),
        ("PUT", f"/v2.0/networks/{net_id}", {"network": {"name": "renamed"}}),
        ("PUT", f"/v2.0/ports/{port_id}", {"port": {"name": "renamed"}}),
        ("DELETE", f"/v2.0/ports/{port_id}", None),
        ("DELETE", f"/v2.0/subnets/{sub_id}", None),
        ("DELETE", f"/v2.0/networks/{net_id}", None),
    ]
    for method, path, body in writes:
        resp = services.call(method, "network", path, reader.token, json=body)
        assert resp.status_code == 403, (method, path, resp.status_code, resp.text)
        assert resp.json()["NeutronError"]["type"] == "PolicyNotAuthorized"
    ports = services.call("GET", "network", "/v2.0/ports", member.token).json()["ports"]
    assert [(p["id"], p["name"]) for p in ports] == [(port_id, "")]  # nothing changed


def test_unscoped_tokens_are_refused_every_write(services: Services) -> None:
    """Bug: a token scoped to no project created ports on the shared network."""
    member = Caller(services, "up", "up-member", "member")
    net_id, sub_id = network_with_subnet(services, "10.92.0.0/24", token=member.token)
    port_id = services.call("POST", "network", "/v2.0/ports", member.token,
                            json=port_body(net_id)).json()["port"]["id"]
    pnet, _ = provider(services)
    writes = [
        ("POST", "/v2.0/networks", {"network": {"name": "u"}}),
        ("POST", "/v2.0/subnets", {"subnet": {"network_id": net_id, "cidr": "10.93.0.0/24"}}),
        ("POST", "/v2.0/ports", port_body(pnet)),
        ("POST", "/v2.0/ports", port_body(net_id)),
        ("PUT", f"/v2.0/networks/{net_id}", {"network": {"name": "renamed"}}),
        ("PUT", f"/v2.0/ports/{port_id}", {"port": {"name": "renamed"}}),
        ("DELETE", f"/v2.0/ports/{port_id}", None),
        ("DELETE", f"/v2.0/subnets/{sub_id}", None),
        ("DELETE", f"/v2.0/networks/{net_id}", None),
    ]
    for method, path, body in writes:
        resp = services.call(method, "network", path, member.unscoped, json=body)
        assert resp.status_code == 403, (method, path, resp.status_code, resp.text)
    # and it sees nothing either: no project, so nothing of any project's
    assert services.call("GET", "network", "/v2.0/ports", member.unscoped).status_code == 403
    assert len(services.call("GET", "network", "/v2.0/ports",
                             member.token).json()["ports"]) == 1


def test_on_a_shared_network_only_admin_picks_address_mac_or_network_owner(
        services: Services) -> None:
    """Bug: any tenant could take any address of the provider network, its gateway
    included, choose a MAC, or pose as a router port (device_owner network:*)."""
    tenant = Caller(services, "sp", "sp-member", "member")
    pnet, psub = provider(services)
    refused = [
        {"fixed_ips": [{"ip_address": "192.0.2.1"}]},  # the gateway
        {"fixed_ips": [{"subnet_id": psub, "ip_address": "192.0.2.77"}]},
        {"mac_address": "fa:16:3e:00:00:01"},
        {"device_owner": "network:router_interface"},
        {"device_owner": "network:dhcp"},
        {"binding:host_id": "hv1"},
    ]
    for extra in refused:
        resp = services.call("POST", "network", "/v2.0/ports", tenant.token,
                             json=port_body(pnet, **extra))
        assert resp.status_code == 403, (extra, resp.status_code, resp.text)
    assert services.call("GET", "network", "/v2.0/ports", tenant.token).json()["ports"] == []
    # what Nova sends for a server, and a subnet choice, stay allowed
    ok = services.call("POST", "network", "/v2.0/ports", tenant.token, json=port_body(
        pnet, device_owner="compute:nova", device_id="vm-1", fixed_ips=[{"subnet_id": psub}]))
    assert ok.status_code == 201, ok.text
    assert ok.json()["port"]["fixed_ips"][0]["ip_address"] != "192.0.2.1"
    # nor may the tenant turn its port into a router port afterwards
    port_id = ok.json()["port"]["id"]
    upd = services.call("PUT", "network", f"/v2.0/ports/{port_id}", tenant.token,
                        json={"port": {"device_owner": "network:router_gateway"}})
    assert upd.status_code == 403, upd.text
    # the administrator may
    admin = services.call("POST", "network", "/v2.0/ports",
                          json=port_body(pnet, fixed_ips=[{"ip_address": "192.0.2.77"}],
                                         mac_address="fa:16:3e:00:00:01"))
    assert admin.status_code == 201, admin.text


def test_gateway_and_addresses_outside_the_pools_are_admin_only(services: Services) -> None:
    """Bug: the owner of a network could take its gateway or an address outside its pools."""
    owner = Caller(services, "gp", "gp-member", "member")
    net_id, _ = network_with_subnet(services, "10.94.0.0/24", token=owner.token,
                                    allocation_pools=[{"start": "10.94.0.10",
                                                       "end": "10.94.0.20"}])
    for address in ("10.94.0.1", "10.94.0.5", "10.94.0.200"):
        resp = services.call("POST", "network", "/v2.0/ports", owner.token,
                             json=port_body(net_id, fixed_ips=[{"ip_address": address}]))
        assert resp.status_code == 403, (address, resp.text)
    inside = services.call("POST", "network", "/v2.0/ports", owner.token,
                           json=port_body(net_id, fixed_ips=[{"ip_address": "10.94.0.15"}],
                                          mac_address="fa:16:3e:00:00:02",
                                          device_owner="network:dhcp"))
    assert inside.status_code == 201, inside.text  # its own network: Neutron's owner rules
    admin = services.call("POST", "network", "/v2.0/ports",
                          json=port_body(net_id, fixed_ips=[{"ip_address": "10.94.0.1"}]))
    assert admin.status_code == 201, admin.text


def test_admin_only_attributes_and_other_projects(services: Services) -> None:
    """Provider attributes, external networks and other projects are the admin's."""
    alice = Caller(services, "ap", "ap-member", "member")
    bob = Caller(services, "bp", "bp-member", "member")
    for extra in ({"router:external": True}, {"provider:physical_network": "provider"},
                  {"provider:network_type": "flat"}, {"shared": True},
                  {"project_id": bob.project_id}):
        resp = services.call("POST", "network", "/v2.0/networks", alice.token,
                             json={"network": {"name": "x", **extra}})
        assert resp.status_code == 403, (extra, resp.text)
    net_id, sub_id = network_with_subnet(services, "10.95.0.0/24", token=alice.token)
    port_id = services.call("POST", "network", "/v2.0/ports", alice.token,
                            json=port_body(net_id)).json()["port"]["id"]
    for method, path in (("GET", f"/v2.0/ports/{port_id}"), ("DELETE", f"/v2.0/ports/{port_id}"),
                         ("DELETE", f"/v2.0/subnets/{sub_id}"),
                         ("PUT", f"/v2.0/networks/{net_id}")):
        resp = services.call(method, "network", path, bob.token,
                             json={"network": {"name": "b"}} if method == "PUT" else None)
        assert resp.status_code == 404, (method, path, resp.text)
    assert services.call("POST", "network", "/v2.0/ports", bob.token,
                         json=port_body(net_id)).status_code == 404
    shared = services.call("PUT", "network", f"/v2.0/networks/{net_id}", alice.token,
                           json={"network": {"shared": True}})
    assert shared.status_code == 403
    assert services.call("DELETE", "network", f"/v2.0/ports/{port_id}").status_code == 204


def test_a_subnet_has_dhcp_unless_asked_otherwise(services: Services) -> None:
    """Neutron's default (the stock CLI sends nothing unless --no-dhcp): a tenant's
    subnet without a word about DHCP gets it."""
    _, on = network_with_subnet(services, "10.94.0.0/24")
    _, off = network_with_subnet(services, "10.95.0.0/24", enable_dhcp=False)
    shown = {s: services.call("GET", "network", f"/v2.0/subnets/{s}").json()["subnet"]
             for s in (on, off)}
    assert (shown[on]["enable_dhcp"], shown[off]["enable_dhcp"]) == (True, False)


def test_a_subnet_with_two_allocation_pools_serves_both_and_nothing_else(
        services: Services) -> None:
    """Bug: a second pool was refused (and before that, silently dropped)."""
    net_id, sub_id = network_with_subnet(services, "10.96.0.0/24", allocation_pools=[
        {"start": "10.96.0.30", "end": "10.96.0.31"},
        {"start": "10.96.0.10", "end": "10.96.0.11"}])
    shown = services.call("GET", "network", f"/v2.0/subnets/{sub_id}").json()["subnet"]
    assert shown["allocation_pools"] == [{"start": "10.96.0.10", "end": "10.96.0.11"},
                                         {"start": "10.96.0.30", "end": "10.96.0.31"}]
    handed = set()
    for _ in range(4):
        port = services.call("POST", "network", "/v2.0/ports", json=port_body(net_id))
        assert port.status_code == 201, port.text
        handed.add(port.json()["port"]["fixed_ips"][0]["ip_address"])
    assert handed == {"10.96.0.10", "10.96.0.11", "10.96.0.30", "10.96.0.31"}
    full = services.call("POST", "network", "/v2.0/ports", json=port_body(net_id))
    assert full.status_code == 409 and "No more IP addresses" in full.text, full.text

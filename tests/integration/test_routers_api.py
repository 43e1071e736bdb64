"""Routers and floating IPs (Neutron's L3 API) on SQLite and a real MariaDB: the
tenant's path from ``router create`` to a floating IP on a port, Neutron's refusals
(each leaving nothing half-made), visibility, quotas, and the stock CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from tests.conftest import ADMIN_PASSWORD, CLIENT_ON_SQLITE, Services

BIN = Path(sys.executable).parent


def ok(resp: requests.Response, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else None


def refused(resp: requests.Response, status: int, *words: str) -> str:
    assert resp.status_code == status, resp.text
    message = str(resp.json()["NeutronError"]["message"])
    for word in words:
        assert word in message, message
    return message


class Net:
    """The network API as one caller."""

    def __init__(self, services: Services, token: str | None = None) -> None:
        self.services, self.token = services, token

    def __call__(self, method: str, path: str, body: Any = None) -> requests.Response:
        return self.services.call(method, "network", path, self.token, json=body)

    def network(self, name: str, cidr: str | None = None, **attrs: Any) -> tuple[str, str | None]:
        net = ok(self("POST", "/v2.0/networks", {"network": {"name": name, **attrs}}),
                 201)["network"]["id"]
        if cidr is None:
            return net, None
        sub = ok(self("POST", "/v2.0/subnets", {"subnet": {
            "network_id": net, "cidr": cidr, "ip_version": 4}}), 201)["subnet"]["id"]
        return net, sub

    def port(self, net_id: str, subnet_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"network_id": net_id}
        if subnet_id is not None:
            body["fixed_ips"] = [{"subnet_id": subnet_id}]
        return ok(self("POST", "/v2.0/ports", {"port": body}), 201)["port"]

    def router(self, name: str, **attrs: Any) -> dict[str, Any]:
        return ok(self("POST", "/v2.0/routers", {"router": {"name": name, **attrs}}),
                  201)["router"]

    def fip(self, net_id: str, **attrs: Any) -> requests.Response:
        return self("POST", "/v2.0/floatingips",
                    {"floatingip": {"floating_network_id": net_id, **attrs}})

    def count(self, collection: str, query: str = "") -> int:
        return len(ok(self("GET", f"/v2.0/{collection}{query}"))[collection])


def public(services: Services, cidr: str = "203.0.113.0/24") -> tuple[str, str]:
    """An external network (not shared) with one subnet, made by the administrator."""
    admin = Net(services)
    net, sub = admin.network("public", cidr, **{"router:external": True})
    assert sub is not None
    return net, sub


def tenant(services: Services, name: str) -> Net:
    return Net(services, services.member(name, f"{name}-user"))


def test_router_floating_ip_path_and_what_it_protects(services: Services) -> None:
    pub, pub_sub = public(services)
    alice = tenant(services, "l3a")
    assert alice.count("networks", "?router:external=true") >= 1  # external: everyone sees it
    net, sub = alice.network("net1", "10.0.0.0/24")
    assert sub is not None
    router = alice.router("r1")
    assert router["external_gateway_info"] is None
    set_gw = ok(alice("PUT", f"/v2.0/routers/{router['id']}", {"router": {
        "external_gateway_info": {"network_id": pub}}}))["router"]
    info = set_gw["external_gateway_info"]
    assert info["network_id"] == pub and info["enable_snat"] is True
    [gw_ip] = info["external_fixed_ips"]
    assert gw_ip["subnet_id"] == pub_sub and gw_ip["ip_address"].startswith("203.0.113.")
    assert gw_ip["ip_address"] != "203.0.113.1"  # the subnet's own gateway

    added = ok(alice("PUT", f"/v2.0/routers/{router['id']}/add_router_interface",
                     {"subnet_id": sub}))
    assert added["subnet_id"] == sub and added["network_id"] == net
    rport = ok(alice("GET", f"/v2.0/ports/{added['port_id']}"))["port"]
    assert rport["fixed_ips"] == [{"subnet_id": sub, "ip_address": "10.0.0.1"}]
    assert (rport["device_owner"], rport["device_id"]) == ("network:router_interface",
                                                           router["id"])

    vm = alice.port(net)
    fixed = vm["fixed_ips"][0]["ip_address"]
    fip = ok(alice.fip(pub), 201)["floatingip"]
    assert fip["status"] == "DOWN" and fip["port_id"] is None
    assert fip["floating_ip_address"].startswith("203.0.113.")
    assert fip["floating_ip_address"] != gw_ip["ip_address"]
    fip = ok(alice("PUT", f"/v2.0/floatingips/{fip['id']}",
                   {"floatingip": {"port_id": vm["id"]}}))["floatingip"]
    assert (fip["port_id"], fip["fixed_ip_address"], fip["router_id"]) == (
        vm["id"], fixed, router["id"])
    listed = ok(alice("GET", f"/v2.0/floatingips?floating_ip_address="
                             f"{fip['floating_ip_address']}"))["floatingips"]
    assert [f["id"] for f in listed] == [fip["id"]]

    # what the association protects, each a 409 that changes nothing
    rid = router["id"]
    refused(alice("PUT", f"/v2.0/routers/{rid}/remove_router_interface", {"subnet_id": sub}),
            409, "required by one or more floating IPs")
    refused(alice("PUT", f"/v2.0/routers/{rid}", {"router": {"external_gateway_info": {}}}),
            409, "Gateway cannot be updated")
    refused(alice("DELETE", f"/v2.0/routers/{rid}"), 409, "still attached")
    refused(alice("DELETE", f"/v2.0/subnets/{sub}"), 409)
    refused(alice("DELETE", f"/v2.0/networks/{net}"), 409)
    refused(alice("DELETE", f"/v2.0/ports/{added['port_id']}"), 409, "router_interface")
    admin = Net(services)
    fip_port = ok(admin("GET", f"/v2.0/ports?device_id={fip['id']}"))["ports"][0]
    refused(admin("DELETE", f"/v2.0/ports/{fip_port['id']}"), 409, "network:floatingip")
    refused(admin("PUT", f"/v2.0/networks/{pub}", {"network": {"router:external": False}}),
            409, "non-external")
    refused(alice("PUT", f"/v2.0/networks/{pub}", {"network": {"router:external": False}}),
            403)
    shown = ok(alice("GET", f"/v2.0/routers/{rid}"))["router"]
    assert shown["external_gateway_info"]["external_fixed_ips"] == [gw_ip]
    assert ok(alice("GET", f"/v2.0/floatingips/{fip['id']}"))["floatingip"]["port_id"] == vm["id"]

    # deleting the server's port disassociates its floating IP (as Neutron)
    ok(alice("DELETE", f"/v2.0/ports/{vm['id']}"), 204)
    gone = ok(alice("GET", f"/v2.0/floatingips/{fip['id']}"))["floatingip"]
    assert (gone["port_id"], gone["fixed_ip_address"], gone["router_id"]) == (None, None, None)

    # then everything comes apart in order, and nothing is left on the external network
    removed = ok(alice("PUT", f"/v2.0/routers/{rid}/remove_router_interface",
                       {"subnet_id": sub}))
    assert removed["port_id"] == added["port_id"]
    refused(alice("PUT", f"/v2.0/routers/{rid}/remove_router_interface", {"subnet_id": sub}),
            404, "has no interface on subnet")
    ok(alice("DELETE", f"/v2.0/routers/{rid}"), 204)
    ok(alice("DELETE", f"/v2.0/floatingips/{fip['id']}"), 204)
    assert admin.count("ports", f"?network_id={pub}") == 0
    ok(alice("DELETE", f"/v2.0/networks/{net}"), 204)


def test_bad_input_is_refused_and_leaves_nothing(services: Services) -> None:
    pub, pub_sub = public(services)
    alice = tenant(services, "l3b")
    admin = Net(services)
    net, sub = alice.network("net1", "10.1.0.0/24")
    assert sub is not None
    # subnets: overlapping on one network, gateway outside or on the network address
    for body, name in [
        ({"cidr": "10.1.0.128/25"}, "cidr"),
        ({"cidr": "10.1.0.0/16"}, "cidr"),
        ({"cidr": "10.2.0.0/24", "gateway_ip": "10.3.0.1"}, "gateway_ip"),
        ({"cidr": "10.2.0.0/24", "gateway_ip": "10.2.0.0"}, "gateway_ip"),
        ({"cidr": "10.2.0.0/24", "gateway_ip": "10.2.0.255"}, "gateway_ip"),
    ]:
        refused(alice("POST", "/v2.0/subnets", {"subnet": {"network_id": net, **body}}),
                400, name)
    assert alice.count("subnets", f"?network_id={net}") == 1
    ok(alice("POST", "/v2.0/subnets", {"subnet": {"network_id": net, "cidr": "10.2.0.0/24"}}),
       201)  # the same range on another network is fine, on this one when disjoint too

    # a floating IP from a network that is not external: 400, no port, no address
    ports_before = admin.count("ports")
    refused(alice.fip(net), 400, "not a valid external network", "floating_network_id")
    assert admin.count("ports") == ports_before and alice.count("floatingips") == 0

    # a router gateway on a network that is not external: no router made
    refused(alice("POST", "/v2.0/routers", {"router": {
        "name": "bad", "external_gateway_info": {"network_id": net}}}), 400,
        "not an external network")
    assert alice.count("routers") == 0 and admin.count("ports") == ports_before
    r = alice.router("r")
    rid = r["id"]
    refused(alice("PUT", f"/v2.0/routers/{rid}", {"router": {
        "external_gateway_info": {"network_id": net}}}), 400, "not an external network")
    refused(alice("PUT", f"/v2.0/routers/{rid}", {"router": {
        "external_gateway_info": {"network_id": pub, "enable_snat": False}}}), 403)
    refused(alice("PUT", f"/v2.0/routers/{rid}", {"router": {
        "external_gateway_info": {"network_id": pub, "external_fixed_ips": [
            {"ip_address": "203.0.113.9"}]}}}), 403)
    refused(admin("PUT", f"/v2.0/routers/{rid}", {"router": {
        "external_gateway_info": {"network_id": pub, "external_fixed_ips": [
            {"ip_address": "203.0.113.1"}]}}}), 400, "same as the gateway IP")
    refused(admin("PUT", f"/v2.0/routers/{rid}", {"router": {
        "external_gateway_info": {"network_id": pub, "external_fixed_ips": [
            {"ip_address": "198.51.100.7"}]}}}), 400, "external_fixed_ips[0].ip_address")
    refused(alice("PUT", f"/v2.0/routers/{rid}", {"router": {
        "routes": [{"destination": "0.0.0.0/0", "nexthop": "10.1.0.9"}]}}), 400, "routes")
    refused(alice("POST", "/v2.0/routers", {"router": {"name": "d", "distributed": True}}),
            400, "distributed")
    assert ok(alice("GET", f"/v2.0/routers/{rid}"))["router"]["external_gateway_info"] is None
    assert admin.count("ports") == ports_before

    # interfaces
    path = f"/v2.0/routers/{rid}/add_router_interface"
    refused(alice("PUT", path, {}), 400, "Either subnet_id or port_id")
    refused(alice("PUT", path, {"subnet_id": sub, "port_id": "x"}), 400, "both")
    no_gw = ok(alice("POST", "/v2.0/subnets", {"subnet": {
        "network_id": alice.network("n2")[0], "cidr": "10.5.0.0/24", "gateway_ip": None}}),
        201)["subnet"]["id"]
    refused(alice("PUT", path, {"subnet_id": no_gw}), 400, "gateway IP")
    ok(alice("PUT", path, {"subnet_id": sub}))
    refused(alice("PUT", path, {"subnet_id": sub}), 400, "already has a port on subnet")
    _, clash = alice.network("n3", "10.1.0.0/25")
    refused(alice("PUT", path, {"subnet_id": clash}), 400, "overlaps")
    busy = alice.port(net)
    ok(alice("PUT", f"/v2.0/ports/{busy['id']}", {"port": {"device_id": "some-server"}}))
    refused(alice("PUT", path, {"port_id": busy["id"]}), 409, "attached device")
    refused(alice("PUT", path, {"subnet_id": pub_sub}), 400, "not owned by project")
    interfaces = f"?device_id={rid}&device_owner=network:router_interface"
    assert alice.count("ports", interfaces) == 1

    # a gateway whose external subnets overlap an interface: refused, router unchanged
    _, overlapping_pub_sub = public(services, "10.1.0.0/16")
    overlapping_pub = ok(admin("GET", f"/v2.0/subnets/{overlapping_pub_sub}"))["subnet"][
        "network_id"]
    refused(alice("PUT", f"/v2.0/routers/{rid}", {"router": {
        "external_gateway_info": {"network_id": overlapping_pub}}}), 400, "overlaps")

    # floating IPs: no router between the port's subnet and the external network: 404,
    # and a create that fails on its association leaves no floating IP and no port
    vm = alice.port(net, sub)  # the network has two subnets: on the router's
    ports_before = admin.count("ports")
    refused(alice.fip(pub, port_id=vm["id"]), 404, "is not reachable from subnet")
    assert alice.count("floatingips") == 0 and admin.count("ports") == ports_before
    fip = ok(alice.fip(pub), 201)["floatingip"]
    fpath = f"/v2.0/floatingips/{fip['id']}"
    refused(alice("PUT", fpath, {"floatingip": {"port_id": vm["id"]}}), 404, "not reachable")
    ok(alice("PUT", f"/v2.0/routers/{rid}", {"router": {
        "external_gateway_info": {"network_id": pub}}}))
    refused(alice("PUT", fpath, {"floatingip": {"port_id": vm["id"],
                                                "fixed_ip_address": "10.1.0.0"}}),
            400, "does not have fixed ip")
    refused(alice("PUT", fpath, {"floatingip": {"fixed_ip_address": "10.1.0.0"}}),
            400, "without a port_id")
    refused(alice("PUT", fpath, {"floatingip": {"port_id": busy["id"], "bogus": 1}}),
            400, "bogus")
    gw_port = ok(alice("GET", f"/v2.0/ports{interfaces}"))["ports"][0]
    refused(alice("PUT", fpath, {"floatingip": {"port_id": gw_port["id"]}}), 400,
            "unable to be assigned")
    assert ok(alice("GET", fpath))["floatingip"]["port_id"] is None
    refused(alice.fip(pub, floating_ip_address="203.0.113.77"), 403)
    ok(alice("PUT", fpath, {"floatingip": {"port_id": vm["id"]}}))
    second = ok(alice.fip(pub), 201)["floatingip"]
    refused(alice("PUT", f"/v2.0/floatingips/{second['id']}",
                  {"floatingip": {"port_id": vm["id"]}}), 409, "already has a floating IP")

    # another project's port or floating IP is not even seen
    bob = tenant(services, "l3c")
    refused(bob("PUT", fpath, {"floatingip": {"port_id": None}}), 404)
    refused(bob("GET", f"/v2.0/routers/{rid}"), 404)
    bob_fip = ok(bob.fip(pub), 201)["floatingip"]
    refused(bob("PUT", f"/v2.0/floatingips/{bob_fip['id']}",
                {"floatingip": {"port_id": vm["id"]}}), 404)
    assert [r["id"] for r in ok(bob("GET", "/v2.0/routers"))["routers"]] == []


def test_router_and_floatingip_quotas(services: Services) -> None:
    pub, _ = public(services)
    carol = tenant(services, "l3q")
    admin = Net(services)
    pid = ok(services.call("GET", "identity", "/v3/projects?name=l3q"))["projects"][0]["id"]
    ok(admin("PUT", f"/v2.0/quotas/{pid}", {"quota": {"router": 1, "floatingip": 1}}))
    carol.router("one")
    refused(carol("POST", "/v2.0/routers", {"router": {"name": "two"}}), 409,
            "Quota exceeded for resources: ['router']")
    ok(carol.fip(pub), 201)
    ports = admin.count("ports")
    refused(carol.fip(pub), 409, "['floatingip']")
    assert admin.count("ports") == ports and carol.count("floatingips") == 1
    details = ok(admin("GET", f"/v2.0/quotas/{pid}/details"))["quota"]
    assert details["router"] == {"limit": 1, "used": 1, "reserved": 0}
    assert details["floatingip"] == {"limit": 1, "used": 1, "reserved": 0}


@CLIENT_ON_SQLITE
def test_extensions_the_cli_looks_up(services: Services) -> None:
    admin = Net(services)
    aliases = {e["alias"] for e in ok(admin("GET", "/v2.0/extensions"))["extensions"]}
    assert {"router", "external-net", "ext-gw-mode"} <= aliases
    assert ok(admin("GET", "/v2.0/extensions/router"))["extension"]["alias"] == "router"
    refused(admin("GET", "/v2.0/extensions/external-gateway-multihoming"), 404)


def openstack(services: Services, *args: str, user: str = "admin",
              password: str = ADMIN_PASSWORD, project: str = "admin") -> str:
    """The stock ``openstack`` CLI (credentials in its environment); its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_AUTH_URL=f"{services.url('identity')}/v3", OS_USERNAME=user,
               OS_PASSWORD=password, OS_PROJECT_NAME=project, OS_USER_DOMAIN_ID="default",
               OS_PROJECT_DOMAIN_ID="default", OS_REGION_NAME="RegionOne",
               OS_IDENTITY_API_VERSION="3", OS_INTERFACE="public")
    done = subprocess.run([str(BIN / "openstack"), *args], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


@CLIENT_ON_SQLITE
def test_stock_cli(services: Services) -> None:
    """The issue's tenant commands, unchanged (``server add floating ip`` needs compute:
    ``floating ip set --port`` is what it does on the network side)."""
    services.member("l3cli", "l3cli-user")
    openstack(services, "network", "create", "--external", "public")
    openstack(services, "subnet", "create", "--network", "public", "--subnet-range",
              "203.0.113.0/24", "public-sub")
    me = {"user": "l3cli-user", "password": "pw", "project": "l3cli"}

    def cli(*args: str) -> Any:
        out = openstack(services, *args, "-f", "json", **me)
        return json.loads(out) if out.strip() else None

    cli("network", "create", "net1")
    cli("subnet", "create", "--network", "net1", "--subnet-range", "10.0.0.0/24", "sub1")
    cli("router", "create", "r1")
    openstack(services, "router", "set", "--external-gateway", "public", "r1", **me)
    openstack(services, "router", "add", "subnet", "r1", "sub1", **me)
    router = cli("router", "show", "r1")
    assert router["external_gateway_info"]["enable_snat"] is True
    assert router["external_gateway_info"]["external_fixed_ips"][0]["ip_address"].startswith(
        "203.0.113.")
    fip = cli("floating", "ip", "create", "public")
    port = cli("port", "create", "--network", "net1", "vm-port")
    openstack(services, "floating", "ip", "set", "--port", "vm-port",
              fip["floating_ip_address"], **me)
    shown = cli("floating", "ip", "show", fip["floating_ip_address"])
    assert shown["port_id"] == port["id"]
    assert shown["fixed_ip_address"] == port["fixed_ips"][0]["ip_address"]
    assert shown["router_id"] == router["id"]
    listed = cli("floating", "ip", "list", "--port", "vm-port")
    assert [f["ID"] for f in listed] == [fip["id"]]
    openstack(services, "floating", "ip", "unset", "--port", fip["floating_ip_address"], **me)
    assert cli("floating", "ip", "show", fip["id"])["port_id"] is None
    openstack(services, "router", "remove", "subnet", "r1", "sub1", **me)
    openstack(services, "router", "unset", "--external-gateway", "r1", **me)
    assert cli("router", "show", "r1")["external_gateway_info"] is None
    openstack(services, "router", "delete", "r1", **me)
    openstack(services, "floating", "ip", "delete", fip["id"], **me)


def test_the_data_plane_spec_follows_the_database(services: Services) -> None:
    """What the router's agent will apply (core.network.routerns.source) is what the API
    says the router is."""
    from core.network.routerns.plan import FloatingMap, plan
    from core.network.routerns.source import router_spec

    pub, pub_sub = public(services)
    alice = tenant(services, "l3s")
    net, sub = alice.network("net1", "10.0.0.0/24")
    rid = alice.router("r1")["id"]
    info = ok(alice("PUT", f"/v2.0/routers/{rid}", {"router": {
        "external_gateway_info": {"network_id": pub}}}))["router"]["external_gateway_info"]
    ok(alice("PUT", f"/v2.0/routers/{rid}/add_router_interface", {"subnet_id": sub}))
    vm = alice.port(net)
    fip = ok(alice.fip(pub, port_id=vm["id"]), 201)["floatingip"]

    def spec() -> Any:
        with services.db.session() as s:
            return router_spec(s, rid, lambda network_id: f"brq{network_id[:11]}")

    got = spec()
    assert got.namespace == f"qrouter-{rid}" and got.enable_snat and got.admin_state_up
    assert got.gateway is not None
    assert (got.gateway.address, got.gateway.prefixlen, got.gateway.next_hop,
            got.gateway.bridge) == (info["external_fixed_ips"][0]["ip_address"], 24,
                                    "203.0.113.1", f"brq{pub[:11]}")
    [leg] = got.interfaces
    assert (leg.address, leg.prefixlen, leg.bridge) == ("10.0.0.1", 24, f"brq{net[:11]}")
    assert got.floating_ips == (FloatingMap(fip["floating_ip_address"],
                                            vm["fixed_ips"][0]["ip_address"]),)
    plan(got)  # consistent
    ok(alice("PUT", f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": None}}))
    assert spec().floating_ips == ()
    assert pub_sub


def test_association_and_interface_removal_never_both_win(services: Services) -> None:
    """An association needs the router's interface; removing the interface refuses while
    a floating IP needs it. Racing the two must never let both succeed (a floating IP
    would then point through an interface that is gone): the router's row is written
    first by each, which queues them (core.network.l3.lock_router)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    pub, _ = public(services)
    alice = tenant(services, "l3r")
    net, sub = alice.network("net1", "10.0.0.0/24")
    rid = alice.router("r1")["id"]
    ok(alice("PUT", f"/v2.0/routers/{rid}", {"router": {
        "external_gateway_info": {"network_id": pub}}}))
    vm = alice.port(net)
    fip = ok(alice.fip(pub), 201)["floatingip"]
    outcomes = set()
    for _ in range(12):
        ok(alice("PUT", f"/v2.0/routers/{rid}/add_router_interface", {"subnet_id": sub}))
        start = threading.Barrier(2)

        def remove(start: threading.Barrier) -> int:
            start.wait()
            return alice("PUT", f"/v2.0/routers/{rid}/remove_router_interface",
                         {"subnet_id": sub}).status_code

        def associate(start: threading.Barrier) -> int:
            start.wait()
            return alice("PUT", f"/v2.0/floatingips/{fip['id']}",
                         {"floatingip": {"port_id": vm["id"]}}).status_code

        with ThreadPoolExecutor(2) as pool:
            removed, associated = (f.result() for f in [pool.submit(remove, start),
                                                        pool.submit(associate, start)])
        outcomes.add((removed, associated))
        assert (removed, associated) in {(200, 404), (409, 200)}, (removed, associated)
        shown = ok(alice("GET", f"/v2.0/floatingips/{fip['id']}"))["floatingip"]
        interfaces = alice.count("ports", f"?device_id={rid}&device_owner="
                                          "network:router_interface")
        assert (shown["router_id"] is not None) == (interfaces == 1)
        ok(alice("PUT", f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": None}}))
        if interfaces:
            ok(alice("PUT", f"/v2.0/routers/{rid}/remove_router_interface",
                     {"subnet_id": sub}))

"""Security groups at server create, in the server's view, and added or removed on a
running server, through the real compute and network APIs and the stock CLI.

The server's groups are its port's: each assertion reads the port from the network
API (what the network agents enforce), not only what compute answers. Hosts are
compute service rows written directly (as in test_keypairs): servers are placed but
nothing boots.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from core.compute.models import Instance
from tests.conftest import CLIENT_ON_SQLITE, Services
from tests.integration.computeapi import Compute
from tests.integration.test_quotas import openstack_cli, project_id


@pytest.fixture
def compute(compute: Compute) -> Compute:
    compute.add_host("h1", slots=20)
    return compute


def net(services: Services, method: str, path: str, token: str | None = None,
        body: dict[str, Any] | None = None, status: int = 200) -> Any:
    resp = services.call(method, "network", path, token, json=body)
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else {}


def group(services: Services, token: str, name: str) -> str:
    return str(net(services, "POST", "/v2.0/security-groups", token,
                   {"security_group": {"name": name}}, 201)["security_group"]["id"])


def port_groups(services: Services, server_id: str) -> set[str]:
    [port] = net(services, "GET", f"/v2.0/ports?device_id={server_id}")["ports"]
    return set(port["security_groups"])


def shown_groups(compute: Compute, server_id: str, token: str) -> list[str]:
    server = compute.call("GET", f"/servers/{server_id}", token).json()["server"]
    return sorted(g["name"] for g in server.get("security_groups", []))


def message(resp: Any) -> str:
    body = resp.json()
    return str(next(iter(body.values()))["message"])


def counts(services: Services) -> tuple[int, int]:
    servers = services.db.run_in_transaction(lambda s: s.scalar(
        select(func.count()).select_from(Instance)))
    return int(servers or 0), len(net(services, "GET", "/v2.0/ports")["ports"])


def boot(compute: Compute, token: str, name: str, **extra: Any) -> Any:
    return compute.call("POST", "/servers", token, json={"server": {
        "name": name, "imageRef": compute.image, "flavorRef": "1", "networks": "auto",
        **extra}})


def test_create_applies_the_requested_groups_and_the_view_shows_the_ports(
        compute: Compute) -> None:
    services = compute.services
    member = services.member("sgc", "sgc-user")
    pid = project_id(services, "sgc")
    web, ssh = group(services, member, "web"), group(services, member, "ssh")

    # by name and by id; the port gets exactly those, not the project's default
    made = boot(compute, member, "vm", security_groups=[{"name": "web"}, {"name": ssh},
                                                         {"name": "web"}])
    assert made.status_code == 202, made.text
    assert made.json()["server"]["security_groups"] == [{"name": "web"}, {"name": ssh}]
    vm = made.json()["server"]["id"]
    assert port_groups(services, vm) == {web, ssh}
    assert shown_groups(compute, vm, member) == ["ssh", "web"]
    listed = compute.call("GET", "/servers/detail", member).json()["servers"]
    assert sorted(g["name"] for g in listed[0]["security_groups"]) == ["ssh", "web"]

    # none asked for: the default group, as before
    plain = boot(compute, member, "plain")
    assert plain.status_code == 202, plain.text
    plain_id = plain.json()["server"]["id"]
    [default] = net(services, "GET", f"/v2.0/security-groups?name=default&project_id={pid}",
                    member)["security_groups"]
    assert port_groups(services, plain_id) == {default["id"]}
    assert shown_groups(compute, plain_id, member) == ["default"]
    # a server without a port has no security groups (Nova leaves the key out)
    portless = boot(compute, member, "portless", networks="none")
    assert portless.status_code == 202, portless.text
    shown = compute.call("GET", f"/servers/{portless.json()['server']['id']}",
                         member).json()["server"]
    assert "security_groups" not in shown

    # refusals name the group, and leave no server and no port behind
    other = services.member("sgc-other", "sgc-other-user")
    theirs = group(services, other, "theirs")
    group(services, member, "twin")
    group(services, member, "twin")
    before = counts(services)
    for groups, status, named in (
            ([{"name": "nosuch"}], 400, f"Security group nosuch not found for project {pid}"),
            ([{"name": theirs}], 400, f"Security group {theirs} not found for project"),
            ([{"name": "twin"}], 409, "Multiple security groups found matching 'twin'"),
            ([{"name": ""}], 400, "'server.security_groups[0].name'"),
            ([{"name": "web", "id": web}], 400, "'server.security_groups[0]'"),
            ({"name": "web"}, 400, "'server.security_groups'")):
        resp = boot(compute, member, "refused", security_groups=groups)
        assert resp.status_code == status, (groups, resp.text)
        assert named in message(resp), (named, message(resp))
    port = net(services, "POST", "/v2.0/ports", member, {"port": {
        "network_id": default_network(services, member)}}, 201)["port"]
    after_port = counts(services)
    for networks, named in (("none", "no network"), ([{"port": port["id"]}], "given port")):
        resp = boot(compute, member, "refused", networks=networks,
                    security_groups=[{"name": "web"}])
        assert resp.status_code == 400 and named in message(resp), resp.text
    assert counts(services) == after_port == (before[0], before[1] + 1)


def default_network(services: Services, token: str) -> str:
    [found] = net(services, "GET", "/v2.0/networks", token)["networks"]
    return str(found["id"])


def test_add_and_remove_security_group_change_the_port(compute: Compute) -> None:
    services = compute.services
    member = services.member("sga", "sga-user")
    pid = project_id(services, "sga")
    web, ssh = group(services, member, "web"), group(services, member, "ssh")
    vm = boot(compute, member, "vm", security_groups=[{"name": "web"}]).json()["server"]["id"]

    def act(body: dict[str, Any]) -> Any:
        return compute.call("POST", f"/servers/{vm}/action", member, json=body)

    assert act({"addSecurityGroup": {"name": "ssh"}}).status_code == 202
    assert port_groups(services, vm) == {web, ssh}
    assert act({"addSecurityGroup": {"name": ssh}}).status_code == 202  # already there
    assert port_groups(services, vm) == {web, ssh}
    assert shown_groups(compute, vm, member) == ["ssh", "web"]
    assert act({"removeSecurityGroup": {"name": web}}).status_code == 202
    assert port_groups(services, vm) == {ssh}
    assert shown_groups(compute, vm, member) == ["ssh"]

    missing = act({"removeSecurityGroup": {"name": "web"}})
    assert missing.status_code == 404 and "not associated" in message(missing)
    unknown = act({"addSecurityGroup": {"name": "nosuch"}})
    assert unknown.status_code == 404
    assert f"nosuch is not found for project {pid}" in message(unknown)
    empty = act({"addSecurityGroup": {"name": " "}})
    assert empty.status_code == 400 and "addSecurityGroup.name" in message(empty)
    assert port_groups(services, vm) == {ssh}
    # a reader of the project may not change its server's groups; another project
    # does not see the server at all
    stranger = services.member("sga-other", "sga-other-user")
    assert compute.call("POST", f"/servers/{vm}/action", stranger, json={
        "addSecurityGroup": {"name": "web"}}).status_code == 404
    # a server without a port: nothing to add a group to
    portless = boot(compute, member, "portless", networks="none").json()["server"]["id"]
    resp = compute.call("POST", f"/servers/{portless}/action", member,
                        json={"addSecurityGroup": {"name": "web"}})
    assert resp.status_code == 404 and "any ports" in message(resp)


@CLIENT_ON_SQLITE
def test_stock_cli_server_create_with_security_groups(compute: Compute) -> None:
    services = compute.services

    def cli(*args: str) -> Any:
        done = openstack_cli(services, *args)
        assert done.returncode == 0, (args, done.stderr)
        return json.loads(done.stdout) if "json" in args else done.stdout

    web = cli("security", "group", "create", "web", "-f", "json")["id"]
    ssh = cli("security", "group", "create", "ssh", "-f", "json")["id"]
    cli("security", "group", "create", "db", "-f", "json")
    name = services.cfg.network.provider_name
    cli("server", "create", "--image", "t", "--flavor", "m1.tiny", "--network", name,
        "--security-group", "web", "--security-group", ssh, "vm1", "-f", "json")
    server = cli("server", "show", "vm1", "-f", "json")
    assert port_groups(services, server["id"]) == {web, ssh}
    assert sorted(g["name"] for g in server["security_groups"]) == ["ssh", "web"], server

    cli("server", "add", "security", "group", "vm1", "db")
    cli("server", "remove", "security", "group", "vm1", "web")
    server = cli("server", "show", "vm1", "-f", "json")
    assert sorted(g["name"] for g in server["security_groups"]) == ["db", "ssh"], server
    gone = openstack_cli(services, "server", "remove", "security", "group", "vm1", "web")
    assert gone.returncode != 0 and "not associated" in gone.stderr, gone.stderr
    # the CLI itself refuses a group it cannot find before asking compute
    unknown = openstack_cli(services, "server", "create", "--image", "t", "--flavor",
                            "m1.tiny", "--network", name, "--security-group", "nosuch", "vm2")
    assert unknown.returncode != 0 and "nosuch" in unknown.stderr
    listed = cli("server", "list", "-f", "json")
    assert [s["Name"] for s in listed] == ["vm1"]

"""``GET /servers/{id}/os-security-groups``: the groups of a server's port in Nova's
format, through the real compute and network APIs and openstacksdk.

What the answer must hold is read from the network API itself (the port's groups,
their rules), so a listing that made up or dropped a group or a rule fails.
"""

from __future__ import annotations

from typing import Any

import openstack
import pytest

from tests.conftest import ADMIN_PASSWORD, CLIENT_ON_SQLITE, Services
from tests.integration.computeapi import Compute
from tests.integration.test_network_api import Caller
from tests.integration.test_quotas import project_id
from tests.integration.test_server_security_groups import boot, group, net


@pytest.fixture
def compute(compute: Compute) -> Compute:
    compute.add_host("h1", slots=20)
    return compute


def rule(services: Services, token: str, group_id: str, status: int = 201,
         **fields: Any) -> dict[str, Any]:
    made = net(services, "POST", "/v2.0/security-group-rules", token, {
        "security_group_rule": {"security_group_id": group_id, "direction": "ingress",
                                **fields}}, status)
    return dict(made["security_group_rule"])


def listed(compute: Compute, server_id: str, token: str, status: int = 200) -> Any:
    resp = compute.call("GET", f"/servers/{server_id}/os-security-groups", token)
    assert resp.status_code == status, resp.text
    return resp.json()


def test_lists_the_ports_groups_with_their_ingress_rules_in_novas_format(
        compute: Compute) -> None:
    services = compute.services
    member = services.member("sgl", "sgl-user")
    pid = project_id(services, "sgl")
    web, ssh = group(services, member, "web"), group(services, member, "ssh")
    unused = group(services, member, "unused")
    http = rule(services, member, web, protocol="tcp", port_range_min=80,
                port_range_max=80, remote_ip_prefix="10.0.0.0/8")
    any_tcp = rule(services, member, web, protocol="tcp")
    icmp = rule(services, member, web, protocol="icmp")
    from_ssh = rule(services, member, web, protocol="udp", port_range_min=53,
                    port_range_max=53, remote_group_id=ssh)
    from_unused = rule(services, member, web, remote_group_id=unused)
    # an administrator names another project's group in the member's group: the
    # member cannot see that group, so (as in Nova) the member is not shown the rule
    other = services.member("sgl-other", "sgl-other-user")
    theirs = group(services, other, "theirs")
    from_theirs = rule(services, services.admin_token, web, protocol="tcp",
                       remote_group_id=theirs)
    vm = boot(compute, member, "vm", security_groups=[{"name": "web"}, {"name": "ssh"}])
    assert vm.status_code == 202, vm.text
    vm_id = vm.json()["server"]["id"]

    groups = listed(compute, vm_id, member)["security_groups"]
    assert [(g["name"], g["tenant_id"]) for g in groups] == [("ssh", pid), ("web", pid)]
    assert groups[1]["id"] == web and groups[1]["description"] == ""
    # the network API's egress rules of both groups are not Nova's
    assert groups[0]["rules"] == []
    assert sorted(groups[1]["rules"], key=lambda r: str(r["id"])) == sorted([
        {"id": http["id"], "parent_group_id": web, "ip_protocol": "tcp", "from_port": 80,
         "to_port": 80, "group": {}, "ip_range": {"cidr": "10.0.0.0/8"}},
        {"id": any_tcp["id"], "parent_group_id": web, "ip_protocol": "tcp",
         "from_port": 1, "to_port": 65535, "group": {}, "ip_range": {"cidr": "0.0.0.0/0"}},
        {"id": icmp["id"], "parent_group_id": web, "ip_protocol": "icmp",
         "from_port": -1, "to_port": -1, "group": {}, "ip_range": {"cidr": "0.0.0.0/0"}},
        {"id": from_ssh["id"], "parent_group_id": web, "ip_protocol": "udp",
         "from_port": 53, "to_port": 53, "group": {"name": "ssh", "tenant_id": pid},
         "ip_range": {}},
        {"id": from_unused["id"], "parent_group_id": web, "ip_protocol": None,
         "from_port": None, "to_port": None, "group": {"name": "unused", "tenant_id": pid},
         "ip_range": {}},
    ], key=lambda r: str(r["id"]))
    # the administrator sees that rule, with the other project's group named
    as_admin = listed(compute, vm_id, services.admin_token)["security_groups"]
    [shown] = [r for r in as_admin[1]["rules"] if r["id"] == from_theirs["id"]]
    assert shown["group"] == {"name": "theirs", "tenant_id": project_id(services, "sgl-other")}

    # the list follows the port: after removeSecurityGroup, one group
    done = compute.call("POST", f"/servers/{vm_id}/action", member,
                        json={"removeSecurityGroup": {"name": "web"}})
    assert done.status_code == 202, done.text
    [port] = net(services, "GET", f"/v2.0/ports?device_id={vm_id}")["ports"]
    assert port["security_groups"] == [ssh]
    assert [g["id"] for g in listed(compute, vm_id, member)["security_groups"]] == [ssh]

    # a reader of the project may list them; another project does not see the server
    reader = Caller(services, "sgl", "sgl-reader", "reader", project_id=pid)
    assert [g["id"] for g in listed(compute, vm_id, reader.token)["security_groups"]] == [ssh]
    refused = listed(compute, vm_id, other, 404)
    assert f"Instance {vm_id} could not be found" in message_of(refused)
    listed(compute, "no-such-server", member, 404)
    # a server without a port has no groups
    portless = boot(compute, member, "portless", networks="none")
    assert portless.status_code == 202, portless.text
    assert listed(compute, portless.json()["server"]["id"], member) == {"security_groups": []}


def message_of(body: dict[str, Any]) -> str:
    return str(next(iter(body.values()))["message"])


@CLIENT_ON_SQLITE
def test_openstacksdk_fetches_a_servers_security_groups(compute: Compute) -> None:
    services = compute.services
    conn = openstack.connect(
        auth_url=f"{services.url('identity')}/v3", username="admin", password=ADMIN_PASSWORD,
        project_name="admin", user_domain_id="default", project_domain_id="default",
        region_name="RegionOne", identity_api_version="3", load_yaml_config=False,
        load_envvars=False)
    web = conn.network.create_security_group(name="web")
    conn.network.create_security_group_rule(security_group_id=web.id, direction="ingress",
                                            protocol="tcp", port_range_min=22,
                                            port_range_max=22)
    net_id = conn.network.find_network(services.cfg.network.provider_name).id
    server = conn.compute.create_server(
        name="vm", image_id=conn.image.find_image("t").id,
        flavor_id=conn.compute.find_flavor("m1.tiny").id, networks=[{"uuid": net_id}],
        security_groups=[{"name": "web"}])
    fetched = conn.compute.fetch_server_security_groups(server)
    [shown] = fetched.security_groups
    assert (shown["id"], shown["name"]) == (web.id, "web")
    [ssh] = shown["rules"]
    assert (ssh["ip_protocol"], ssh["from_port"], ssh["to_port"], ssh["ip_range"]) == (
        "tcp", 22, 22, {"cidr": "0.0.0.0/0"})
    # the cloud layer's list (what ``openstack`` tools built on it show)
    assert [g["name"] for g in conn.list_server_security_groups(server.id)] == ["web"]

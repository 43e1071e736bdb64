"""Security groups through the network API (SQLite and a real MariaDB): Neutron's
default group, rules and their checks, ports' groups, policy, quotas, and the stock
``openstack security group`` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from tests.conftest import CLIENT_ON_SQLITE, Services
from tests.integration.test_network_api import Caller, network_with_subnet

BIN = Path(sys.executable).parent
RULES = "/v2.0/security-group-rules"
GROUPS = "/v2.0/security-groups"


def call(services: Services, method: str, path: str, token: str | None = None,
         body: dict[str, Any] | None = None) -> requests.Response:
    return services.call(method, "network", path, token, json=body)


def make_group(services: Services, name: str, token: str | None = None) -> dict[str, Any]:
    resp = call(services, "POST", GROUPS, token, {"security_group": {"name": name}})
    assert resp.status_code == 201, resp.text
    return dict(resp.json()["security_group"])


def rule_body(group_id: str, **extra: Any) -> dict[str, Any]:
    return {"security_group_rule": {"security_group_id": group_id, "direction": "ingress",
                                    **extra}}


def rules_of(services: Services, group_id: str, token: str | None = None) -> list[Any]:
    resp = call(services, "GET", f"{RULES}?security_group_id={group_id}", token)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["security_group_rules"])


def shape(rule: dict[str, Any]) -> tuple[Any, ...]:
    return (rule["direction"], rule["ethertype"], rule["protocol"], rule["remote_ip_prefix"],
            rule["remote_group_id"] is not None)


def test_default_group_made_once_on_first_need(services: Services) -> None:
    """The first list makes the project's ``default`` group with Neutron's four rules;
    ten concurrent first lists of another project still make exactly one."""
    member = Caller(services, "sg-d", "sg-d-user", "member")
    listed = call(services, "GET", GROUPS, member.token).json()["security_groups"]
    assert [g["name"] for g in listed] == ["default"]
    default = listed[0]
    assert Counter(shape(r) for r in default["security_group_rules"]) == Counter({
        ("egress", "IPv4", None, None, False): 1, ("egress", "IPv6", None, None, False): 1,
        ("ingress", "IPv4", None, None, True): 1, ("ingress", "IPv6", None, None, True): 1})
    assert {r["remote_group_id"] for r in default["security_group_rules"]} == {
        None, default["id"]}
    again = call(services, "GET", GROUPS, member.token).json()["security_groups"]
    assert [g["id"] for g in again] == [default["id"]]

    racer = Caller(services, "sg-race", "sg-race-user", "member")
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: call(services, "GET", GROUPS, racer.token),
                                range(10)))
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    ids = {g["id"] for a in answers for g in a.json()["security_groups"]}
    assert len(ids) == 1


def test_group_lifecycle_and_the_default_group_rules(services: Services) -> None:
    member = Caller(services, "sg-l", "sg-l-user", "member")
    web = make_group(services, "web", member.token)
    assert Counter(shape(r) for r in web["security_group_rules"]) == Counter({
        ("egress", "IPv4", None, None, False): 1, ("egress", "IPv6", None, None, False): 1})
    renamed = call(services, "PUT", f"{GROUPS}/{web['id']}", member.token,
                   {"security_group": {"name": "web2", "description": "d"}})
    assert renamed.status_code == 200 and renamed.json()["security_group"]["name"] == "web2"
    default = call(services, "GET", f"{GROUPS}?name=default",
                   member.token).json()["security_groups"][0]
    refusals = [
        ("POST", GROUPS, {"security_group": {"name": "default"}}, 409),
        ("PUT", f"{GROUPS}/{default['id']}", {"security_group": {"name": "x"}}, 409),
        ("PUT", f"{GROUPS}/{web['id']}", {"security_group": {"name": "default"}}, 409),
        ("DELETE", f"{GROUPS}/{default['id']}", None, 409),
        ("POST", GROUPS, {"security_group": {"name": "s", "stateful": False}}, 400),
        ("POST", GROUPS, {"security_group": {"name": "s", "colour": "red"}}, 400),
    ]
    for method, path, body, status in refusals:
        resp = call(services, method, path, member.token, body)
        assert resp.status_code == status, (method, path, body, resp.text)
        assert "NeutronError" in resp.json()
    names = sorted(g["name"] for g in call(services, "GET", GROUPS,
                                           member.token).json()["security_groups"])
    assert names == ["default", "web2"]  # nothing half-made by the refusals
    assert call(services, "DELETE", f"{GROUPS}/{web['id']}", member.token).status_code == 204
    assert call(services, "GET", f"{GROUPS}/{web['id']}", member.token).status_code == 404


def test_rule_checks_answer_400_naming_the_field_and_store_nothing(services: Services) -> None:
    group = make_group(services, "checks")
    gid = group["id"]
    before = rules_of(services, gid)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"protocol": "tcp", "port_range_min": 90, "port_range_max": 80}, "port_range_min"),
        ({"protocol": "tcp", "port_range_min": 0, "port_range_max": 80}, "port_range_min"),
        ({"protocol": "tcp", "port_range_min": 22}, "port_range_max"),
        ({"protocol": "udp", "port_range_min": 1, "port_range_max": 70000}, "port_range_max"),
        ({"protocol": "tcp", "port_range_min": "ssh", "port_range_max": 22}, "port_range_min"),
        ({"port_range_min": 22, "port_range_max": 22}, "protocol"),
        ({"protocol": "gre", "port_range_min": 22, "port_range_max": 22}, "port_range"),
        ({"protocol": "icmp", "port_range_min": 300}, "port_range_min"),
        ({"protocol": "icmp", "port_range_max": 0}, "port_range_min"),
        ({"protocol": "icmp", "port_range_min": 8, "port_range_max": 256}, "port_range_max"),
        ({"protocol": "nonsense"}, "protocol"),
        ({"protocol": "256"}, "protocol"),
        ({"ethertype": "IPv5"}, "ethertype"),
        ({"ethertype": "IPv4", "remote_ip_prefix": "2001:db8::/64"}, "remote_ip_prefix"),
        ({"ethertype": "IPv6", "remote_ip_prefix": "10.0.0.0/8"}, "remote_ip_prefix"),
        ({"remote_ip_prefix": "10.0.0.0/33"}, "remote_ip_prefix"),
        ({"ethertype": "IPv4", "protocol": "icmpv6"}, "ethertype"),
        ({"remote_ip_prefix": "10.0.0.0/8", "remote_group_id": gid}, "remote_group_id"),
        ({"remote_address_group_id": gid}, "remote_address_group_id"),
        ({"bogus": 1}, "bogus"),
    ]
    for extra, name in cases:
        resp = call(services, "POST", RULES, body=rule_body(gid, **extra))
        assert resp.status_code == 400, (extra, resp.text)
        assert name in resp.json()["NeutronError"]["message"], (extra, resp.text)
    bad_direction = call(services, "POST", RULES, body={"security_group_rule": {
        "security_group_id": gid, "direction": "sideways"}})
    assert bad_direction.status_code == 400 and "direction" in bad_direction.text
    missing = call(services, "POST", RULES, body=rule_body(
        gid, remote_group_id="5d0a7d9e-0000-4000-8000-000000000000"))
    assert missing.status_code == 404
    assert rules_of(services, gid) == before


def test_rules_as_neutron_stores_them_and_duplicates(services: Services) -> None:
    gid = make_group(services, "dups")["id"]
    made = call(services, "POST", RULES, body=rule_body(
        gid, protocol="tcp", port_range_min=22, port_range_max=22,
        remote_ip_prefix="10.1.2.3/24"))
    assert made.status_code == 201, made.text
    rule = made.json()["security_group_rule"]
    assert (rule["ethertype"], rule["protocol"], rule["remote_ip_prefix"],
            rule["normalized_cidr"]) == ("IPv4", "tcp", "10.1.2.3/24", "10.1.2.0/24")
    same = call(services, "POST", RULES, body=rule_body(
        gid, protocol="6", port_range_min=22, port_range_max=22,
        remote_ip_prefix="10.1.2.0/24"))
    assert same.status_code == 409 and rule["id"] in same.json()["NeutronError"]["message"]
    # the CLI's any-address prefix and no prefix are the same rule
    egress = call(services, "POST", RULES, body={"security_group_rule": {
        "security_group_id": gid, "direction": "egress", "remote_ip_prefix": "0.0.0.0/0"}})
    assert egress.status_code == 409, egress.text
    icmp = call(services, "POST", RULES, body=rule_body(
        gid, ethertype="IPv6", protocol="ipv6-icmp", port_range_min=128, port_range_max=0))
    assert icmp.status_code == 201, icmp.text
    remote = call(services, "POST", RULES, body=rule_body(gid, protocol=132,
                                                          remote_group_id=gid))
    assert remote.status_code == 201 and remote.json()["security_group_rule"]["protocol"] == "132"
    changed = call(services, "PUT", f"{RULES}/{rule['id']}", body={"security_group_rule": {
        "port_range_min": 23}})
    assert changed.status_code == 400 and "port_range_min" in changed.text
    described = call(services, "PUT", f"{RULES}/{rule['id']}", body={"security_group_rule": {
        "description": "ssh"}})
    assert described.status_code == 200
    assert described.json()["security_group_rule"]["description"] == "ssh"
    assert call(services, "DELETE", f"{RULES}/{rule['id']}").status_code == 204
    assert call(services, "GET", f"{RULES}/{rule['id']}").status_code == 404
    # deleting a group takes the rules naming it as remote group (Neutron)
    other = make_group(services, "other")["id"]
    call(services, "POST", RULES, body=rule_body(other, remote_group_id=gid))
    assert call(services, "DELETE", f"{GROUPS}/{gid}").status_code == 204
    assert [r["remote_group_id"] for r in rules_of(services, other)] == [None, None]


def test_ports_carry_groups_and_port_security(services: Services) -> None:
    member = Caller(services, "sg-p", "sg-p-user", "member")
    stranger = Caller(services, "sg-q", "sg-q-user", "member")
    net_id, _ = network_with_subnet(services, "10.61.0.0/24", token=member.token)
    port = call(services, "POST", "/v2.0/ports", member.token,
                {"port": {"network_id": net_id}}).json()["port"]
    default = call(services, "GET", f"{GROUPS}?name=default",
                   member.token).json()["security_groups"][0]
    assert port["security_groups"] == [default["id"]] and port["port_security_enabled"]
    web = make_group(services, "web", member.token)
    theirs = make_group(services, "theirs", stranger.token)
    pid = port["id"]
    moved = call(services, "PUT", f"/v2.0/ports/{pid}", member.token,
                 {"port": {"security_groups": [web["id"]]}})
    assert moved.status_code == 200 and moved.json()["port"]["security_groups"] == [web["id"]]
    for body, status in [
        ({"security_groups": [theirs["id"]]}, 404),  # another project's group
        ({"security_groups": "web"}, 400),
        ({"port_security_enabled": False}, 409),  # it still has a group
    ]:
        resp = call(services, "PUT", f"/v2.0/ports/{pid}", member.token, {"port": body})
        assert resp.status_code == status, (body, resp.text)
    assert call(services, "GET", f"/v2.0/ports/{pid}",
                member.token).json()["port"]["security_groups"] == [web["id"]]
    # in use: the group cannot go
    in_use = call(services, "DELETE", f"{GROUPS}/{web['id']}", member.token)
    assert in_use.status_code == 409 and "in use" in in_use.text
    off = call(services, "PUT", f"/v2.0/ports/{pid}", member.token,
               {"port": {"security_groups": [], "port_security_enabled": False}})
    assert off.status_code == 200, off.text
    assert (off.json()["port"]["security_groups"],
            off.json()["port"]["port_security_enabled"]) == ([], False)
    assert call(services, "DELETE", f"{GROUPS}/{web['id']}", member.token).status_code == 204
    # on create: groups named, the stranger's refused, no groups without port security
    named = call(services, "POST", "/v2.0/ports", member.token, {"port": {
        "network_id": net_id, "security_groups": [default["id"]]}})
    assert named.status_code == 201 and named.json()["port"]["security_groups"] == [
        default["id"]]
    count = len(call(services, "GET", "/v2.0/ports", member.token).json()["ports"])
    for body, status in [
        ({"security_groups": [theirs["id"]]}, 404),
        ({"security_groups": [default["id"]], "port_security_enabled": False}, 400),
    ]:
        resp = call(services, "POST", "/v2.0/ports", member.token,
                    {"port": {"network_id": net_id, **body}})
        assert resp.status_code == status, (body, resp.text)
    assert len(call(services, "GET", "/v2.0/ports", member.token).json()["ports"]) == count
    bare = call(services, "POST", "/v2.0/ports", member.token, {"port": {
        "network_id": net_id, "port_security_enabled": False}})
    assert bare.status_code == 201 and bare.json()["port"]["security_groups"] == []
    # the shared provider network: a tenant may not turn port security off (spoofing)
    provider = call(services, "GET", "/v2.0/networks?name=provider").json()["networks"][0]
    spoof = call(services, "POST", "/v2.0/ports", member.token, {"port": {
        "network_id": provider["id"], "port_security_enabled": False}})
    assert spoof.status_code == 403, spoof.text


def test_policy_readers_strangers_and_unscoped(services: Services) -> None:
    member = Caller(services, "sg-r", "sg-r-member", "member")
    reader = Caller(services, "sg-r", "sg-r-reader", "reader", project_id=member.project_id)
    stranger = Caller(services, "sg-s", "sg-s-member", "member")
    group = make_group(services, "g", member.token)
    rule = call(services, "POST", RULES, member.token, rule_body(
        group["id"], protocol="tcp", port_range_min=80,
        port_range_max=80)).json()["security_group_rule"]
    assert call(services, "GET", f"{GROUPS}/{group['id']}", reader.token).status_code == 200
    assert call(services, "GET", f"{RULES}/{rule['id']}", reader.token).status_code == 200
    writes = [("POST", GROUPS, {"security_group": {"name": "r"}}),
              ("PUT", f"{GROUPS}/{group['id']}", {"security_group": {"name": "r"}}),
              ("DELETE", f"{GROUPS}/{group['id']}", None),
              ("POST", RULES, rule_body(group["id"], protocol="udp")),
              ("DELETE", f"{RULES}/{rule['id']}", None)]
    for method, path, body in writes:
        resp = call(services, method, path, reader.token, body)
        assert resp.status_code == 403, (method, path, resp.text)
        resp = call(services, method, path, member.unscoped, body)
        assert resp.status_code == 403, (method, path, resp.text)
    for method, path, body in writes[1:]:
        resp = call(services, method, path, stranger.token, body)
        assert resp.status_code == 404, (method, path, resp.text)
    assert call(services, "GET", GROUPS, member.unscoped).status_code == 403
    assert group["id"] not in {g["id"] for g in call(services, "GET", GROUPS,
                                                     stranger.token).json()["security_groups"]}
    assert rule["id"] not in {r["id"] for r in call(services, "GET", RULES,
                                                    stranger.token).json()["security_group_rules"]}


def test_quotas_and_paging(services: Services) -> None:
    member = Caller(services, "sg-quota", "sg-quota-user", "member")
    pid = member.project_id
    limits = call(services, "PUT", f"/v2.0/quotas/{pid}",
                  body={"quota": {"security_group": 2, "security_group_rule": 7}})
    assert limits.status_code == 200, limits.text
    make_group(services, "one", member.token)  # the default group is made too: 2 of 2
    over = call(services, "POST", GROUPS, member.token, {"security_group": {"name": "two"}})
    assert over.status_code == 409 and over.json()["NeutronError"]["type"] == "OverQuota"
    used = call(services, "GET", f"/v2.0/quotas/{pid}/details").json()["quota"]
    assert used["security_group"] == {"limit": 2, "used": 2, "reserved": 0}
    assert used["security_group_rule"]["used"] == 6  # the default's 4, the new group's 2
    default = call(services, "GET", f"{GROUPS}?name=default",
                   member.token).json()["security_groups"][0]
    ok = call(services, "POST", RULES, member.token, rule_body(default["id"], protocol="tcp",
                                                               port_range_min=1,
                                                               port_range_max=2))
    assert ok.status_code == 201
    full = call(services, "POST", RULES, member.token, rule_body(default["id"], protocol="udp"))
    assert full.status_code == 409 and "security_group_rule" in full.text
    page = call(services, "GET", f"{GROUPS}?limit=1", member.token).json()
    assert len(page["security_groups"]) == 1 and page["security_groups_links"]
    nxt = requests.get(page["security_groups_links"][0]["href"], timeout=60,
                       headers={"X-Auth-Token": member.token}).json()
    assert len(nxt["security_groups"]) == 1
    assert nxt["security_groups"][0]["id"] != page["security_groups"][0]["id"]
    rpage = call(services, "GET", f"{RULES}?limit=3", member.token).json()
    assert len(rpage["security_group_rules"]) == 3 and rpage["security_group_rules_links"]
    # an administrator sees every project's groups and filters by project
    mine = call(services, "GET", f"{GROUPS}?project_id={pid}").json()["security_groups"]
    assert sorted(g["name"] for g in mine) == ["default", "one"]
    aliases = {e["alias"] for e in call(services, "GET", "/v2.0/extensions").json()[
        "extensions"]}
    assert {"security-group", "port-security"} <= aliases


def openstack(services: Services, *args: str, user: str, project: str
              ) -> subprocess.CompletedProcess[str]:
    """The stock ``openstack`` CLI; credentials in its environment, not its arguments."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_AUTH_URL=f"{services.url('identity')}/v3", OS_USERNAME=user,
               OS_PASSWORD="pw", OS_PROJECT_NAME=project, OS_USER_DOMAIN_ID="default",
               OS_PROJECT_DOMAIN_ID="default", OS_REGION_NAME="RegionOne",
               OS_IDENTITY_API_VERSION="3", OS_INTERFACE="public")
    return subprocess.run([str(BIN / "openstack"), *args], capture_output=True, text=True,
                          env=env, timeout=120)


@CLIENT_ON_SQLITE
def test_stock_openstack_security_group_cli(services: Services) -> None:
    """The issue's own steps: ``security group rule create --protocol tcp --dst-port 22
    default`` and friends, as a project member."""
    Caller(services, "sg-cli", "sg-cli-user", "member")

    def cli(*args: str) -> str:
        done = openstack(services, *args, user="sg-cli-user", project="sg-cli")
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    groups = json.loads(cli("security", "group", "list", "-f", "json"))
    assert [g["Name"] for g in groups] == ["default"]
    rule = json.loads(cli("security", "group", "rule", "create", "--protocol", "tcp",
                          "--dst-port", "22", "default", "-f", "json"))
    assert (rule["protocol"], rule["port_range_min"], rule["port_range_max"],
            rule["direction"], rule["ether_type"]) == ("tcp", 22, 22, "ingress", "IPv4")
    web = json.loads(cli("security", "group", "create", "web", "--description", "w",
                         "-f", "json"))
    cli("security", "group", "rule", "create", "--protocol", "icmp", "--icmp-type", "8",
        "--remote-group", "default", web["id"])
    listed = json.loads(cli("security", "group", "rule", "list", "web", "-f", "json"))
    assert len(listed) == 3  # two egress rules and the icmp one
    shown = json.loads(cli("security", "group", "show", "default", "-f", "json"))
    assert shown["name"] == "default" and len(shown["rules"]) == 5
    dup = openstack(services, "security", "group", "rule", "create", "--protocol", "tcp",
                    "--dst-port", "22", "default", user="sg-cli-user", project="sg-cli")
    assert dup.returncode != 0 and "already exists" in dup.stderr, dup.stderr
    bad = openstack(services, "security", "group", "rule", "create", "--protocol", "tcp",
                    "--dst-port", "0:20", "default", user="sg-cli-user", project="sg-cli")
    assert bad.returncode != 0 and "port_range_min" in bad.stderr, bad.stderr
    cli("security", "group", "delete", "web")
    refused = openstack(services, "security", "group", "delete", "default",
                        user="sg-cli-user", project="sg-cli")
    assert refused.returncode != 0, refused.stdout
    names = [g["Name"] for g in json.loads(cli("security", "group", "list", "-f", "json"))]
    assert names == ["default"]

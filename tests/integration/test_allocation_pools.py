"""Several allocation pools per subnet, as Neutron keeps them: checked at create and
update with Neutron's answers, served by IPAM from every pool and from nothing else,
shown in full, kept by the migration; through the real API on SQLite and MariaDB and
the stock ``openstack`` CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from core.common import migrate
from core.common.db import Database
from core.network.migrations import SCHEMA as NETWORK
from core.schemas import CORE_SCHEMAS
from tests.conftest import CLIENT_ON_SQLITE, Services
from tests.integration.test_network_api import Caller, network_with_subnet, port_body
from tests.integration.test_routers_api import openstack
from tests.integration.test_subnet_update import put, shown


def pools(*ranges: str) -> list[dict[str, str]]:
    return [dict(zip(("start", "end"), r.split("-"), strict=True)) for r in ranges]


def auto_port(services: Services, net_id: str, token: str | None = None) -> Any:
    return services.call("POST", "network", "/v2.0/ports", token, json=port_body(net_id))


def handed_out(services: Services, net_id: str, token: str | None = None) -> set[str]:
    """Every address automatic allocation still gives on the network (then it is full)."""
    got = set()
    while (port := auto_port(services, net_id, token)).status_code == 201:
        got.add(port.json()["port"]["fixed_ips"][0]["ip_address"])
        assert len(got) < 64, got
    assert port.status_code == 409 and "No more IP addresses" in port.text, port.text
    return got


def test_create_refuses_what_neutron_refuses_and_makes_nothing(services: Services) -> None:
    net = services.call("POST", "network", "/v2.0/networks", json={"network": {"name": "bad"}})
    net_id = net.json()["network"]["id"]
    refused: list[tuple[dict[str, Any], int, str]] = [
        ({"allocation_pools": pools("10.97.0.20-10.97.0.10")}, 400,
         "'allocation_pools[0]': The allocation pool 10.97.0.20-10.97.0.10 is not valid."),
        ({"allocation_pools": pools("10.97.0.10-10.97.0.20", "10.97.0.200-10.97.1.5")}, 400,
         "'allocation_pools[1]': The allocation pool 10.97.0.200-10.97.1.5 spans beyond "
         "the subnet cidr 10.97.0.0/24."),
        ({"allocation_pools": pools("10.97.0.0-10.97.0.9")}, 400, "spans beyond"),
        ({"allocation_pools": pools("10.97.0.250-10.97.0.255")}, 400, "spans beyond"),
        ({"allocation_pools": pools("10.97.0.10-10.97.0.20", "10.97.0.30-10.97.0.40",
                                    "10.97.0.20-10.97.0.25")}, 409,
         "'allocation_pools': Found overlapping allocation pools: 10.97.0.10-10.97.0.20 "
         "10.97.0.20-10.97.0.25 for subnet 10.97.0.0/24."),
        # the default gateway (the first host) and a given one
        ({"allocation_pools": pools("10.97.0.1-10.97.0.9")}, 409,
         "'allocation_pools': Gateway ip 10.97.0.1 conflicts with allocation pool "
         "10.97.0.1-10.97.0.9."),
        ({"gateway_ip": "10.97.0.35",
          "allocation_pools": pools("10.97.0.10-10.97.0.20", "10.97.0.30-10.97.0.40")}, 409,
         "Gateway ip 10.97.0.35 conflicts with allocation pool 10.97.0.30-10.97.0.40."),
        ({"allocation_pools": [{"start": "10.97.0.10", "end": "x"}]}, 400,
         "'allocation_pools[0]'"),
        ({"allocation_pools": [{"start": "10.97.0.10", "end": "10.97.0.20", "x": 1}]}, 400,
         "'allocation_pools[0]'"),
        ({"allocation_pools": "10.97.0.10-10.97.0.20"}, 400, "'allocation_pools'"),
    ]
    for extra, status, says in refused:
        resp = services.call("POST", "network", "/v2.0/subnets", json={"subnet": {
            "network_id": net_id, "cidr": "10.97.0.0/24", "ip_version": 4, **extra}})
        assert resp.status_code == status, (extra, resp.text)
        assert says in resp.json()["NeutronError"]["message"], (extra, resp.text)
        listed = services.call("GET", "network", f"/v2.0/subnets?network_id={net_id}")
        assert listed.json()["subnets"] == [], extra  # nothing half-made


def test_default_pools_leave_a_gateway_in_the_middle_out(services: Services) -> None:
    """Neutron's default pools are the hosts without the gateway: two pools when the
    gateway is not at either end."""
    net_id, sub_id = network_with_subnet(services, "10.98.0.0/29", gateway_ip="10.98.0.3")
    assert shown(services, sub_id)["allocation_pools"] == pools("10.98.0.1-10.98.0.2",
                                                                "10.98.0.4-10.98.0.6")
    assert handed_out(services, net_id) == {"10.98.0.1", "10.98.0.2", "10.98.0.4",
                                            "10.98.0.5", "10.98.0.6"}
    _, no_gw = network_with_subnet(services, "10.98.1.0/29", gateway_ip=None)
    assert shown(services, no_gw)["allocation_pools"] == pools("10.98.1.1-10.98.1.6")


def test_no_pools_means_no_automatic_address(services: Services) -> None:
    owner = Caller(services, "np", "np-member", "member")
    net_id, sub_id = network_with_subnet(services, "10.98.2.0/24", token=owner.token,
                                         allocation_pools=[])
    assert shown(services, sub_id)["allocation_pools"] == []
    assert handed_out(services, net_id, owner.token) == set()
    # an address asked for by name is outside every pool: the administrator's
    named = port_body(net_id, fixed_ips=[{"ip_address": "10.98.2.50"}])
    refused = services.call("POST", "network", "/v2.0/ports", owner.token, json=named)
    assert refused.status_code == 403, refused.text
    assert services.call("POST", "network", "/v2.0/ports", json=named).status_code == 201
    # pools given back: served again
    assert put(services, sub_id, owner.token,
               allocation_pools=pools("10.98.2.50-10.98.2.51")).status_code == 200
    assert handed_out(services, net_id, owner.token) == {"10.98.2.51"}


def test_update_replaces_the_list(services: Services) -> None:
    owner = Caller(services, "up", "up-member", "member")
    net_id, sub_id = network_with_subnet(services, "10.98.3.0/24", token=owner.token,
                                         allocation_pools=pools("10.98.3.10-10.98.3.11",
                                                                "10.98.3.20-10.98.3.21"))
    first = auto_port(services, net_id, owner.token).json()["port"]
    held = first["fixed_ips"][0]["ip_address"]
    # the pool starting at .10 grows, .20's goes, a new one comes
    wanted = pools("10.98.3.10-10.98.3.12", "10.98.3.30-10.98.3.30")
    resp = put(services, sub_id, owner.token, allocation_pools=list(reversed(wanted)))
    assert resp.status_code == 200, resp.text
    assert resp.json()["subnet"]["allocation_pools"] == wanted
    assert shown(services, sub_id)["allocation_pools"] == wanted
    left = {"10.98.3.10", "10.98.3.11", "10.98.3.12", "10.98.3.30"} - {held}
    assert handed_out(services, net_id, owner.token) == left
    # the address held outside the new pools (if it was .20/.21) stays its port's
    kept = services.call("GET", "network", f"/v2.0/ports/{first['id']}").json()["port"]
    assert kept["fixed_ips"][0]["ip_address"] == held
    assert put(services, sub_id, owner.token, allocation_pools=[]).status_code == 200
    assert shown(services, sub_id)["allocation_pools"] == []


# ---- the migration keeps every subnet's pool --------------------------------------------
@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    yield db
    db.dispose()


ROWS = [
    "INSERT INTO networks (id, name, project_id, shared, external, admin_state_up, "
    "network_type, physical_network, mtu, description, created_at, updated_at) VALUES "
    "('n1', 'net', 'p1', 0, 0, 1, 'vxlan', NULL, 1450, '', 1, 1)",
    "INSERT INTO subnets (id, name, network_id, project_id, cidr, gateway_ip, pool_start, "
    "pool_end, enable_dhcp, description, created_at, updated_at) VALUES "
    "('s1', 'sub', 'n1', 'p1', '10.5.0.0/24', '10.5.0.1', '10.5.0.100', '10.5.0.200', 1, "
    "'', 1, 1)",
    "INSERT INTO subnets (id, name, network_id, project_id, cidr, gateway_ip, pool_start, "
    "pool_end, enable_dhcp, description, created_at, updated_at) VALUES "
    "('s2', 'sub2', 'n1', 'p1', '10.6.0.0/24', NULL, '10.6.0.1', '10.6.0.254', 0, '', 1, 1)",
    "INSERT INTO ports (id, name, network_id, project_id, mac_address, device_id, "
    "device_owner, host_id, status, admin_state_up, description, created_at, updated_at) "
    "VALUES ('pt1', '', 'n1', 'p1', 'fa:16:3e:00:00:09', '', '', '', 'DOWN', 1, '', 1, 1)",
    "INSERT INTO ip_allocations (subnet_id, ip_address, port_id) VALUES "
    "('s1', '10.5.0.150', 'pt1')",
]


def rows(db: Database, sql: str) -> list[tuple[Any, ...]]:
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def test_the_migration_keeps_each_subnets_pool_and_goes_back(database: Database) -> None:
    cfg = migrate.alembic_config(database, NETWORK)
    migrate.upgrade(database, CORE_SCHEMAS)
    command.downgrade(cfg, "network_0100_subnetput")
    with database.engine.begin() as conn:
        for sql in ROWS:
            conn.execute(text(sql))
    migrate.upgrade(database, CORE_SCHEMAS)
    assert migrate.differences(database, NETWORK) == []
    assert sorted(rows(database, "SELECT subnet_id, first_ip, last_ip FROM "
                                 "subnet_allocation_pools")) == [
        ("s1", "10.5.0.100", "10.5.0.200"), ("s2", "10.6.0.1", "10.6.0.254")]
    assert rows(database, "SELECT subnet_id, ip_address, port_id FROM ip_allocations") == [
        ("s1", "10.5.0.150", "pt1")]
    # a second pool cannot go back into one column pair: the downgrade refuses, and
    # changes nothing
    with database.engine.begin() as conn:
        conn.execute(text("INSERT INTO subnet_allocation_pools VALUES "
                          "('s1', '10.5.0.20', '10.5.0.30')"))
    with pytest.raises(RuntimeError, match="s1"):
        command.downgrade(cfg, "network_0100_subnetput")
    assert migrate.current_revisions(database, [NETWORK]) == migrate.head_revisions([NETWORK])
    assert len(rows(database, "SELECT * FROM subnet_allocation_pools")) == 3
    with database.engine.begin() as conn:
        conn.execute(text("DELETE FROM subnet_allocation_pools WHERE first_ip = '10.5.0.20'"))
    command.downgrade(cfg, "network_0100_subnetput")
    assert sorted(rows(database, "SELECT id, pool_start, pool_end FROM subnets")) == [
        ("s1", "10.5.0.100", "10.5.0.200"), ("s2", "10.6.0.1", "10.6.0.254")]


# ---- the stock CLI --------------------------------------------------------------------
def cli_pools(value: list[dict[str, str]]) -> list[str]:
    return sorted(f"{p['start']}-{p['end']}" for p in value)


@CLIENT_ON_SQLITE
def test_stock_cli_subnet_with_several_pools(services: Services) -> None:
    openstack(services, "network", "create", "mp")
    made = json.loads(openstack(
        services, "subnet", "create", "--network", "mp", "--subnet-range", "10.99.0.0/24",
        "--allocation-pool", "start=10.99.0.100,end=10.99.0.110",
        "--allocation-pool", "start=10.99.0.10,end=10.99.0.20", "mps", "-f", "json"))
    assert cli_pools(made["allocation_pools"]) == ["10.99.0.10-10.99.0.20",
                                                   "10.99.0.100-10.99.0.110"]
    # ``subnet set --allocation-pool`` adds to the pools, ``unset`` takes one away
    openstack(services, "subnet", "set", "--allocation-pool",
              "start=10.99.0.200,end=10.99.0.210", "mps")
    openstack(services, "subnet", "unset", "--allocation-pool",
              "start=10.99.0.10,end=10.99.0.20", "mps")
    after = json.loads(openstack(services, "subnet", "show", "mps", "-f", "json"))
    assert cli_pools(after["allocation_pools"]) == ["10.99.0.100-10.99.0.110",
                                                    "10.99.0.200-10.99.0.210"]
    port = json.loads(openstack(services, "port", "create", "--network", "mp", "p1",
                                "-f", "json"))
    address = port["fixed_ips"][0]["ip_address"]
    last = int(address.rsplit(".", 1)[1])
    assert 100 <= last <= 110 or 200 <= last <= 210, address

"""Which network agents the network API nudges, and when: through the real API on a
real SQLite database, the nudges sent on the in-process bus (the all-in-one's) and
heard by a consumer per host, as each host's agent would hear them.

What the agents' rounds read for their host decides the expected hosts
(:mod:`core.network.agent_nudges`): a port's own host, its VXLAN network's other
hosts, and the hosts whose filters hold its groups' rules or members.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import bottle
import pytest
from sqlalchemy import text

from core.common.bus.amqp import AmqpBus
from core.common.bus.base import Message
from core.common.bus.local import LocalBus
from core.common.db import Database
from core.common.server import AppServers, Listener
from core.network.agent_nudges import Nudger, after_commit, topic
from core.network.api import create_app as network_app
from tests.conftest import Services
from tests.integration.test_network_api import network_with_subnet, provider
from tests.rabbitmq import free_port

HOSTS = ("hv1", "hv2", "hv3", "hv4")
PROBE = "probe"

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@dataclass
class Heard:
    """The network API with a nudger on a local bus, and what each host's consumer got."""

    services: Services
    bus: LocalBus
    nudger: Nudger
    hosts: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def consumer(self, host: str) -> Any:
        def handle(message: Message) -> Message:
            if not message.get(PROBE):
                with self.lock:
                    self.hosts.append(host)
            return {}
        return handle

    def nudged(self) -> set[str]:
        """The hosts nudged since the last look. Every queued nudge is on the bus once
        the nudger is idle, and a call on a topic is handled after every cast queued
        on it before (one worker per topic, in order)."""
        assert self.nudger.wait_idle(60)
        for host in HOSTS:
            self.bus.call(topic(host), {PROBE: True}, timeout=60)
        with self.lock:
            got = set(self.hosts)
            self.hosts.clear()
        return got

    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            status: int = 200) -> Any:
        resp = self.services.call(method, "network", path, json=body)
        assert resp.status_code == status, resp.text
        return resp.json() if resp.content else {}

    def group(self, name: str) -> str:
        return str(self.api("POST", "/v2.0/security-groups",
                            {"security_group": {"name": name}}, 201)["security_group"]["id"])

    def rule(self, group_id: str, **extra: Any) -> str:
        return str(self.api("POST", "/v2.0/security-group-rules", {"security_group_rule": {
            "security_group_id": group_id, "direction": "ingress", "ethertype": "IPv4",
            "protocol": "tcp", **extra}}, 201)["security_group_rule"]["id"])

    def port(self, network_id: str, host: str = "", **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"network_id": network_id, "device_owner": "compute:nova",
                                **extra}
        if host:
            body["binding:host_id"] = host
        return dict(self.api("POST", "/v2.0/ports", {"port": body}, 201)["port"])

    def update(self, port: dict[str, Any], **changes: Any) -> None:
        self.api("PUT", f"/v2.0/ports/{port['id']}", {"port": changes})


@contextmanager
def network_api_with(services: Services, nudger: Nudger) -> Iterator[Services]:
    """A second network API on ``services``' database whose changes ``nudger`` sends;
    yields the services as a client reaches them through it."""
    cfg = copy.deepcopy(services.cfg)
    cfg.network.listen = f"127.0.0.1:{free_port()}"
    servers = AppServers([Listener("network", cfg.network.listen,
                                   network_app(cfg, services.db, nudger))], threads=4)
    servers.start()
    try:
        yield Services(cfg, services.db, services.admin_token)
    finally:
        servers.stop()


@pytest.fixture
def heard(services: Services) -> Iterator[Heard]:
    """The network API nudging on a local bus that has a consumer for each of HOSTS."""
    bus = LocalBus()
    nudger = Nudger(bus)
    try:
        with network_api_with(services, nudger) as nudging:
            made = Heard(nudging, bus, nudger)
            for host in HOSTS:
                bus.subscribe(topic(host), made.consumer(host))
            yield made
    finally:
        bus.close()


def test_rules_nudge_the_hosts_of_the_groups_ports_and_of_ports_naming_them_remote(
        heard: Heard) -> None:
    net, _ = provider(heard.services)  # flat: no forwarding entries of other hosts
    web, db = heard.group("web"), heard.group("db")
    assert heard.nudged() == set()  # groups without ports concern nobody

    heard.port(net, "hv1", security_groups=[web])
    assert heard.nudged() == {"hv1"}
    heard.port(net, "hv2")  # the default group: its rules name itself as remote group
    assert heard.nudged() == {"hv2"}
    heard.port(net, "hv3", security_groups=[db])
    assert heard.nudged() == {"hv3"}

    # a rule concerns the hosts of its group's ports (hv3), not the remote group's (hv1)
    from_web = heard.rule(db, port_range_min=5432, port_range_max=5432, remote_group_id=web)
    assert heard.nudged() == {"hv3"}
    # a new member of web (unbound) is in the filter of db's ports, which name it
    late = heard.port(net, security_groups=[web])
    assert heard.nudged() == {"hv3"}
    # web's own rules: its ports' host only (db's filter holds web's members, not rules)
    heard.rule(web, port_range_min=80, port_range_max=80)
    assert heard.nudged() == {"hv1"}
    # a member leaving web (the update's old groups count, not only the new)
    heard.update(late, security_groups=[db])
    assert heard.nudged() == {"hv3"}

    heard.api("DELETE", f"/v2.0/security-group-rules/{from_web}", status=204)
    assert heard.nudged() == {"hv3"}
    heard.update(late, security_groups=[web])
    assert heard.nudged() == set()  # nobody names web as remote group any more

    # a second port in the default group: in the filter of the first one (hv2)
    heard.port(net, "hv4")
    assert heard.nudged() == {"hv2", "hv4"}

    # a group that goes takes the rules naming it with it: their hosts' filters change
    gone = heard.group("gone")
    heard.rule(web, port_range_min=443, port_range_max=443, remote_group_id=gone)
    assert heard.nudged() == {"hv1"}
    heard.api("DELETE", f"/v2.0/security-groups/{gone}", status=204)
    assert heard.nudged() == {"hv1"}


def test_a_rebound_port_nudges_its_old_and_new_host_and_its_vxlan_peers(
        heard: Heard) -> None:
    group = heard.group("quiet")  # egress only: nobody's filter holds its members
    net, _ = network_with_subnet(heard.services, "10.77.0.0/24")  # a tenant (VXLAN) network
    p1 = heard.port(net, "hv1", security_groups=[group])
    assert heard.nudged() == {"hv1"}
    p2 = heard.port(net, "hv2", security_groups=[group])
    assert heard.nudged() == {"hv1", "hv2"}  # hv1's forwarding entry for p2

    heard.update(p1, **{"binding:host_id": "hv3"})  # evacuated
    assert heard.nudged() == {"hv1", "hv2", "hv3"}
    heard.update(p1, name="renamed")  # harmless: its hosts run one more round
    assert heard.nudged() == {"hv2", "hv3"}
    heard.api("DELETE", f"/v2.0/ports/{p2['id']}", status=204)
    assert heard.nudged() == {"hv2", "hv3"}

    # on a flat network nobody else holds an entry for a port: old and new host only
    flat, _ = provider(heard.services)
    heard.port(flat, "hv4", security_groups=[group])
    assert heard.nudged() == {"hv4"}
    moving = heard.port(flat, "hv1", security_groups=[group])
    assert heard.nudged() == {"hv1"}
    heard.update(moving, **{"binding:host_id": "hv2"})
    assert heard.nudged() == {"hv1", "hv2"}
    heard.update(moving, **{"binding:host_id": ""})  # unbound: the host it left
    assert heard.nudged() == {"hv2"}


def test_subnets_nudge_the_hosts_serving_dhcp_on_their_network(heard: Heard) -> None:
    group = heard.group("quiet")
    net = heard.api("POST", "/v2.0/networks", {"network": {"name": "d"}}, 201)["network"]["id"]
    heard.api("POST", "/v2.0/subnets", {"subnet": {
        "network_id": net, "cidr": "10.78.0.0/24", "enable_dhcp": True}}, 201)
    assert heard.nudged() == set()  # no port on it yet
    heard.port(net, "hv1", security_groups=[group])
    heard.port(net, "hv2", security_groups=[group])
    heard.port(net, security_groups=[group])
    assert heard.nudged() == {"hv1", "hv2"}
    second = heard.api("POST", "/v2.0/subnets", {"subnet": {
        "network_id": net, "cidr": "10.79.0.0/24", "enable_dhcp": True}}, 201)["subnet"]
    assert heard.nudged() == {"hv1", "hv2"}
    heard.api("PUT", f"/v2.0/subnets/{second['id']}", {"subnet": {"enable_dhcp": False}})
    assert heard.nudged() == {"hv1", "hv2"}  # their dnsmasq stops serving it
    heard.api("PUT", f"/v2.0/subnets/{second['id']}", {"subnet": {"cidr": "10.79.0.0/23"}},
              400)
    assert heard.nudged() == set()  # refused: nobody
    heard.api("DELETE", f"/v2.0/subnets/{second['id']}", status=204)
    assert heard.nudged() == {"hv1", "hv2"}


def test_a_refused_or_rolled_back_request_nudges_nobody(heard: Heard) -> None:
    net, subnet = network_with_subnet(heard.services, "10.80.0.0/24")
    web = heard.group("web")
    heard.port(net, "hv1", security_groups=[web])
    rule = {"port_range_min": 22, "port_range_max": 22}
    heard.rule(web, **rule)
    assert heard.nudged() == {"hv1"}
    # refused before anything was noted: the same rule twice
    heard.api("POST", "/v2.0/security-group-rules", {"security_group_rule": {
        "security_group_id": web, "direction": "ingress", "ethertype": "IPv4",
        "protocol": "tcp", **rule}}, 409)
    assert heard.nudged() == set()

    # refused after its hosts were noted: a router's port bound to hv2 cannot be
    # deleted through the port API (409), so its transaction rolls back
    router = heard.api("POST", "/v2.0/routers", {"router": {"name": "r"}}, 201)["router"]
    leg = heard.api("PUT", f"/v2.0/routers/{router['id']}/add_router_interface",
                    {"subnet_id": subnet})
    assert heard.nudged() == set()  # an unbound port of the cloud's own
    heard.update({"id": leg["port_id"]}, **{"binding:host_id": "hv2"})
    assert heard.nudged() == {"hv1", "hv2"}
    heard.api("DELETE", f"/v2.0/ports/{leg['port_id']}", status=409)
    assert heard.nudged() == set()


def test_a_bus_that_is_down_loses_the_nudges_never_the_change(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    """No broker answers (RabbitMQ down): every change is made and answered all the
    same, its nudges are logged as lost, and the next change's are tried again."""
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    nudger = Nudger(AmqpBus([nowhere], name="network-api", retry_timeout=0.5))
    with network_api_with(services, nudger) as nudging:
        net, _ = provider(nudging)
        for host in ("hv1", "hv2"):
            made = nudging.call("POST", "network", "/v2.0/ports", json={"port": {
                "network_id": net, "binding:host_id": host}})
            assert made.status_code == 201, made.text
            assert nudger.wait_idle(120)
            assert f"could not nudge the network agent of {host}" in caplog.text
        bound = nudging.call("GET", "network", "/v2.0/ports?binding:host_id=hv1"
                             "&binding:host_id=hv2").json()["ports"]
        assert sorted(p["binding:host_id"] for p in bound) == ["hv1", "hv2"]


def test_hosts_are_nudged_at_the_outermost_commit_only(database: Database) -> None:
    """SQLAlchemy's ``after_commit`` fires when a savepoint is released too: a nudge
    sent then could wake an agent whose round does not see the change yet."""
    bus = LocalBus()
    nudger = Nudger(bus)
    heard: list[Message] = []
    bus.subscribe(topic("hv1"), lambda m: None if m.get(PROBE) else heard.append(m))

    def nudged() -> list[Message]:
        assert nudger.wait_idle(60)
        bus.call(topic("hv1"), {PROBE: True}, timeout=60)
        got = list(heard)
        heard.clear()
        return got

    sess = database.sessions()
    bottle.request.bind({"haven.session": sess})  # as the Haven plugin's request has it
    try:
        nudger.prepare()
        sess.execute(text("SELECT 1"))
        after_commit({"hv1"})
        with sess.begin_nested():  # a savepoint, as ensure_default's
            sess.execute(text("SELECT 1"))
        assert nudged() == []
        sess.commit()
        assert nudged() == [{"host": "hv1"}]

        sess.execute(text("SELECT 1"))  # a handler's work (what hosts are read with)
        after_commit({"hv1"})
        sess.rollback()  # the request failed
        sess.commit()
        assert nudged() == []
    finally:
        sess.close()
        bottle.request.bind({})
        bus.close()

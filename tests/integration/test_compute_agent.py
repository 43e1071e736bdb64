"""The compute agent converging libvirt to the database, with real services and bus.

The identity, image, network and compute APIs run in-process on SQLite; the
bus is a real RabbitMQ (tests/rabbitmq.py) where a lost message matters, the
in-process bus elsewhere. The hypervisor is libvirt's built-in test driver
(``test:///default``): these tests are about the agent's decisions, and the
real QEMU guests are booted by the acceptance tests.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest
import requests
from sqlalchemy import update

from core.allinone import bootstrap_cloud
from core.common import migrate
from core.common.bus import Bus, make_bus
from core.common.clients import ServiceClients
from core.common.cliutil import open_database
from core.common.config import HavenConfig, load_config
from core.common.db import Database
from core.common.server import AppServers, Listener
from core.common.settings import cloud_id
from core.compute.agent import ComputeAgent
from core.compute.models import Instance
from core.compute.virt.libvirt import DomainSpec, LibvirtDriver
from ha.extensions import HA_SCHEMAS
from tests.conftest import ADMIN_PASSWORD, free_port
from tests.filemodes import assert_private_layout
from tests.rabbitmq import RabbitMQ

HOST = "agent-test-host"


@dataclass
class Cloud:
    cfg: HavenConfig
    db: Database
    bus: Bus
    servers: AppServers
    compute_url: str
    token: str
    image_id: str
    network_id: str

    def agent(self) -> ComputeAgent:
        driver = LibvirtDriver("test:///default", "qemu")
        return ComputeAgent(self.cfg, self.db, self.bus, driver, ServiceClients(self.cfg))

    def create(self, name: str) -> str:
        resp = requests.post(f"{self.compute_url}/servers", timeout=30, headers={
            "X-Auth-Token": self.token}, json={"server": {
                "name": name, "imageRef": self.image_id, "flavorRef": "1",
                "networks": [{"uuid": self.network_id}]}})
        assert resp.status_code == 202, resp.text
        return str(resp.json()["server"]["id"])

    def instance(self, instance_id: str) -> Instance:
        found = self.db.run_in_transaction(lambda s: s.get(Instance, instance_id))
        assert found is not None
        return found


def wait(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    assert check(), "condition not reached in time"


def make_cloud(tmp_path: Path, bus_driver: str, urls: list[str]) -> Cloud:
    overrides: dict[str, object] = {
        "state_dir": str(tmp_path / "state"), "log.level": "WARNING",
        "compute.host": HOST, "compute.shutdown_timeout": 0,
        "compute.reconcile_interval": 3600, "bus.driver": bus_driver, "bus.urls": urls,
        # no network agent here reports ports plugged (test_compute_wiring.py waits)
        "compute.vif_plugging_timeout": 0,
    }
    for service in ("identity", "compute", "image", "network"):
        overrides[f"{service}.listen"] = f"127.0.0.1:{free_port()}"
    cfg = load_config(overrides=overrides)
    db = open_database(cfg)  # as the haven command makes the state directory and database
    migrate.upgrade(db, HA_SCHEMAS)
    bootstrap_cloud(cfg, db, ADMIN_PASSWORD)
    bus = make_bus(bus_driver, urls, "agent-test")
    from core.compute.api import create_app as compute_app
    from core.identity.app import create_app as identity_app
    from core.image.api import create_app as image_app
    from core.network.api import create_app as network_app

    servers = AppServers([
        Listener("identity", cfg.identity.listen, identity_app(cfg, db)),
        Listener("compute", cfg.compute.listen, compute_app(cfg, db, bus)),
        Listener("image", cfg.image.listen, image_app(cfg, db)),
        Listener("network", cfg.network.listen, network_app(cfg, db)),
    ], threads=8)
    servers.start()
    clients = ServiceClients(cfg)
    disk = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    image = clients.request("POST", "image", "/v2/images", json={
        "name": "t", "disk_format": "qcow2", "container_format": "bare",
        "visibility": "public"}).json()
    clients.request("PUT", "image", f"/v2/images/{image['id']}/file", data=disk.read_bytes(),
                    headers={"Content-Type": "application/octet-stream"})
    network = clients.request("GET", "network", "/v2.0/networks?name=provider").json()
    resp = requests.post(f"http://{cfg.identity.listen}/v3/auth/tokens", timeout=30, json={
        "auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": ADMIN_PASSWORD}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
    return Cloud(cfg, db, bus, servers, f"http://{cfg.compute.listen}/v2.1",
                 resp.headers["X-Subject-Token"], image["id"],
                 network["networks"][0]["id"])


@pytest.fixture
def local_cloud(tmp_path: Path) -> Iterator[Cloud]:
    cloud = make_cloud(tmp_path, "local", [])
    yield cloud
    cloud.servers.stop()
    cloud.bus.close()


def test_reconcile_finishes_a_build_whose_nudge_was_lost(tmp_path: Path,
                                                          rabbitmq: RabbitMQ) -> None:
    """The broker loses the nudge (as rabbitmq-cluster's mnesia wipe does): the
    agent's reconciliation still builds the server, from the database alone."""
    cloud = make_cloud(tmp_path, "amqp", [rabbitmq.url])
    agent = cloud.agent()
    try:
        agent.register()  # the host exists and is up, but its agent is not running yet
        server_id = cloud.create("lost-nudge")
        assert cloud.instance(server_id).host == HOST
        conn = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
        queue = cloud.bus.queue_name(f"compute.{HOST}")  # type: ignore[attr-defined]
        purged = conn.channel().queue_purge(queue)
        conn.close()
        assert purged.method.message_count == 1  # the nudge was there; now it is lost
        agent.start()
        wait(lambda: cloud.instance(server_id).vm_state == "active")
        assert agent.driver.is_running(server_id)
    finally:
        agent.stop()
        cloud.servers.stop()
        cloud.bus.close()


def test_nudges_build_and_delete_and_duplicates_do_nothing_twice(local_cloud: Cloud) -> None:
    agent = local_cloud.agent()
    agent.start()
    try:
        server_id = local_cloud.create("vm")
        wait(lambda: local_cloud.instance(server_id).vm_state == "active")
        launched = local_cloud.instance(server_id).launched_at
        for _ in range(3):  # duplicated messages and reconciliations change nothing
            local_cloud.bus.cast(f"compute.{HOST}", {"instance": server_id})
            agent.converge(server_id)
        assert local_cloud.instance(server_id).launched_at == launched
        assert list(agent.driver.domains()) == [server_id]
        disk = local_cloud.cfg.instances_path / server_id / "disk"
        assert disk.exists()

        resp = requests.delete(f"{local_cloud.compute_url}/servers/{server_id}",
                               headers={"X-Auth-Token": local_cloud.token}, timeout=30)
        assert resp.status_code == 204
        wait(lambda: local_cloud.instance(server_id).deleted)
        assert agent.driver.domains() == {}
        assert not disk.parent.exists()
        port = local_cloud.instance(server_id).port_id
        assert ServiceClients(local_cloud.cfg).request(
            "GET", "network", f"/v2.0/ports/{port}", expect=(404,)).status_code == 404
    finally:
        agent.stop()


def test_files_are_private_from_their_creation(local_cloud: Cloud) -> None:
    """State directory, database, keys and images are the service user's only; the
    instance's disk, console and base image are the QEMU user's where it must read
    them. They used to be world-readable (0755 directories, 0644 files)."""
    agent = local_cloud.agent()
    agent.start()
    try:
        server_id = local_cloud.create("private")
        wait(lambda: local_cloud.instance(server_id).vm_state == "active")
        assert_private_layout(local_cloud.cfg.state_path, server_id)
    finally:
        agent.stop()


def test_domains_of_instances_elsewhere_are_destroyed_never_started(local_cloud: Cloud) -> None:
    """The returning-host rule: a domain whose instance now lives on another host (or
    is gone) is undefined; one of another cloud sharing the libvirtd is left alone."""
    agent = local_cloud.agent()
    agent.start()
    try:
        server_id = local_cloud.create("moved")
        wait(lambda: local_cloud.instance(server_id).vm_state == "active")
        agent.driver.destroy(server_id)  # as after this host's power loss
        local_cloud.db.run_in_transaction(lambda s: s.execute(
            update(Instance).where(Instance.id == server_id).values(host="some-other-host")))
        mine = cloud_id(local_cloud.db)
        orphan = "6c1d9a0e-0000-4000-8000-00000000beef"
        stranger = "6c1d9a0e-0000-4000-8000-00000000cafe"
        for uuid, owner in ((orphan, mine), (stranger, "another-cloud")):
            LibvirtDriver("test:///default", "qemu", owner).define(DomainSpec(
                uuid, "x", 1, 64, Path("/nonexistent"), Path("/nonexistent.log"), None,
                "p", owner))
        agent.reconcile()
        assert not agent.driver.exists(server_id)
        assert not agent.driver.exists(orphan)
        assert LibvirtDriver("test:///default", "qemu", "another-cloud").exists(stranger)
        # the shared disk stays: the instance's new host is using it
        assert (local_cloud.cfg.instances_path / server_id / "disk").exists()
    finally:
        LibvirtDriver("test:///default", "qemu", "another-cloud").undefine(
            "6c1d9a0e-0000-4000-8000-00000000cafe")
        agent.stop()

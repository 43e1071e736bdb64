"""Booting real QEMU guests through the all-in-one, with the stock CLI and openstacksdk.

One all-in-one (real libvirtd, real QEMU under TCG, the tiny guest) serves the
whole module; every test leaves no guest behind.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import openstack as sdk
import pytest
import requests
import yaml

from core.compute.virt.libvirt import autogroup_nice
from tests.acceptance.helpers import AllInOne, openstack
from tests.conftest import free_port
from tests.filemodes import assert_private_layout

MARKER = "HAVEN-TINY-BOOTED"
GUEST_NICE = 5


@pytest.fixture(scope="module")
def cloud() -> Iterator[tuple[AllInOne, Path, Path]]:
    # Not under pytest's 0700 temporary tree: QEMU runs as libvirt-qemu and must pass
    # through every directory above the state directory, as under /var/lib on a node.
    base = Path(tempfile.mkdtemp(prefix="haven-aio-", dir="/var/tmp"))
    base.chmod(0o711)
    state, clouds = base / "state", base / "clouds.yaml"
    aio = AllInOne(state, clouds, free_port(), compute=True,
                   settings=[f"compute.guest_nice={GUEST_NICE}"])
    try:
        yield aio, state, clouds
    finally:
        assert aio.stop() == 0
        shutil.rmtree(base, ignore_errors=True)


def poll(check: Callable[[], bool], timeout: float, what: str,
         detail: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    extra = f"\n{detail()}" if detail else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")


def cli_json(clouds: Path, *args: str) -> object:
    result = openstack(clouds, *args, "-f", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def field(clouds: Path, server: str, name: str) -> str:
    result = openstack(clouds, "server", "show", server, "-c", name, "-f", "value")
    return result.stdout.strip()


def domain_exists(uuid: str) -> bool:
    conn = libvirt.open("qemu:///system")
    try:
        conn.lookupByUUIDString(uuid)
        return True
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def guest_running_niced(uuid: str) -> bool:
    """The domain runs (not left paused) and every thread of its QEMU, and its session's
    scheduler group, has the configured niceness: started paused, reniced, resumed."""
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.lookupByUUIDString(uuid)
        running = dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        pid = int(Path(f"/run/libvirt/qemu/{dom.name()}.pid").read_text())
    finally:
        conn.close()
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    group = autogroup_nice(pid)  # libvirt gives each QEMU a session of its own
    group_niced = group is None or group == GUEST_NICE
    return running and group_niced and all(
        os.getpriority(os.PRIO_PROCESS, t) == GUEST_NICE for t in tids)


def assert_confined_and_private(uuid: str, state: Path) -> None:
    """The guest's QEMU runs as the unprivileged QEMU user; everything the all-in-one
    made is private to its user, and to the QEMU user where QEMU must read it."""
    conn = libvirt.open("qemu:///system")
    try:
        pid = int(Path(f"/run/libvirt/qemu/{conn.lookupByUUIDString(uuid).name()}.pid")
                  .read_text())
    finally:
        conn.close()
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1])
    assert uid == pwd.getpwnam("libvirt-qemu").pw_uid
    assert "Seccomp:\t2" in status  # QEMU's seccomp filter is on
    assert_private_layout(state, uuid)


def test_cli_boot_console_stop_start_delete(cloud: tuple[AllInOne, Path, Path]) -> None:
    aio, state, clouds = cloud
    server = cli_json(clouds, "server", "create", "--image", "tiny", "--flavor", "m1.tiny",
                      "--network", "provider", "--wait", "vm1")
    assert isinstance(server, dict)
    assert server["status"] == "ACTIVE"
    assert str(server["addresses"]).count("192.0.2.") == 1
    uuid = str(server["id"])
    assert domain_exists(uuid)
    assert guest_running_niced(uuid)
    assert_confined_and_private(uuid, state)

    def console() -> str:
        return openstack(clouds, "console", "log", "show", "vm1").stdout

    poll(lambda: MARKER in console(), 90, "the console marker", console)
    assert "HAVEN-TOKEN" in console()

    assert openstack(clouds, "server", "stop", "vm1").returncode == 0
    poll(lambda: field(clouds, "vm1", "status") == "SHUTOFF", 60, "SHUTOFF")
    assert openstack(clouds, "server", "start", "vm1").returncode == 0
    poll(lambda: field(clouds, "vm1", "status") == "ACTIVE", 60, "ACTIVE again")
    assert guest_running_niced(uuid)
    # the second boot finds the token the first one wrote: the disk persisted
    poll(lambda: "from-disk" in console(), 120, "the token read back from disk",
         lambda: console() + "\n".join(aio.lines[-30:]))
    assert openstack(clouds, "server", "reboot", "--hard", "vm1").returncode == 0
    poll(lambda: field(clouds, "vm1", "status") == "ACTIVE", 60, "ACTIVE after a hard reboot")
    assert guest_running_niced(uuid)  # a new QEMU, started the same way

    deleted = openstack(clouds, "server", "delete", "--wait", "vm1")
    assert deleted.returncode == 0, deleted.stderr
    assert not domain_exists(uuid)
    assert not (state / "instances" / uuid).exists()
    ports = cli_json(clouds, "port", "list")
    assert ports == []


def test_openstacksdk_boot_and_delete(cloud: tuple[AllInOne, Path, Path]) -> None:
    _, state, clouds = cloud
    auth = yaml.safe_load(clouds.read_text())["clouds"]["haven"]["auth"]
    conn = sdk.connect(auth_url=auth["auth_url"], username="admin", password=auth["password"],
                       project_name="admin", user_domain_id="default",
                       project_domain_id="default", region_name="RegionOne",
                       load_yaml_config=False, load_envvars=False)
    image = conn.image.find_image("tiny")
    flavor = conn.compute.find_flavor("m1.tiny")
    network = conn.network.find_network("provider")
    server = conn.compute.create_server(name="sdk-vm", image_id=image.id, flavor_id=flavor.id,
                                        networks=[{"uuid": network.id}])
    server = conn.compute.wait_for_server(server, status="ACTIVE", wait=120)
    assert server.addresses["provider"][0]["addr"].startswith("192.0.2.")
    poll(lambda: MARKER in conn.compute.get_server_console_output(server)["output"], 90,
         "the console marker via the SDK")
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, wait=120)
    assert not domain_exists(server.id)
    assert not (state / "instances" / server.id).exists()


def test_bad_input_is_a_clear_400_and_other_projects_servers_404(
        cloud: tuple[AllInOne, Path, Path]) -> None:
    aio, _, clouds = cloud
    auth = yaml.safe_load(clouds.read_text())["clouds"]["haven"]["auth"]
    identity = f"http://127.0.0.1:{aio.ports['identity']}/v3"
    compute = f"http://127.0.0.1:{aio.ports['compute']}/v2.1"

    def token(user: str, password: str, project: str) -> str:
        resp = requests.post(f"{identity}/auth/tokens", timeout=30, json={"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}})
        assert resp.status_code == 201, resp.text
        return resp.headers["X-Subject-Token"]

    admin = {"X-Auth-Token": token("admin", auth["password"], "admin")}
    image_id = cli_json(clouds, "image", "show", "tiny")["id"]  # type: ignore[index]
    good = {"name": "x", "imageRef": image_id, "flavorRef": "1", "networks": "auto"}

    def create(body: object) -> requests.Response:
        return requests.post(f"{compute}/servers", json=body, headers=admin, timeout=30)

    resp = create({"server": {**good, "imageRef": "00000000-0000-0000-0000-000000000000"}})
    assert resp.status_code == 400 and "Image" in resp.json()["badRequest"]["message"]
    resp = create({"server": {**good, "flavorRef": "no-such-flavor"}})
    assert resp.status_code == 400 and "Flavor" in resp.json()["badRequest"]["message"]
    resp = create({"server": {**good, "name": 5}})
    assert resp.status_code == 400 and "'server.name'" in resp.json()["badRequest"]["message"]
    resp = requests.post(f"{compute}/servers", data="{nope", headers={
        **admin, "Content-Type": "application/json"}, timeout=30)
    assert resp.status_code == 400
    resp = create({"server": {**good, "networks": [{"uuid": "nope"}]}})
    assert resp.status_code == 400 and "Network" in resp.json()["badRequest"]["message"]

    # a server of the admin project is invisible to a member of another project
    assert openstack(clouds, "project", "create", "other").returncode == 0
    assert openstack(clouds, "user", "create", "--password", "pw-bob", "bob").returncode == 0
    assert openstack(clouds, "role", "add", "--project", "other", "--user", "bob",
                     "member").returncode == 0
    resp = create({"server": {**good, "name": "admins-vm"}})
    assert resp.status_code == 202, resp.text
    server_id = resp.json()["server"]["id"]
    try:
        bob = {"X-Auth-Token": token("bob", "pw-bob", "other")}
        for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/action")):
            r = requests.request(method, f"{compute}/servers/{server_id}{path}", headers=bob,
                                 json={"os-stop": None} if method == "POST" else None,
                                 timeout=30)
            assert r.status_code == 404, (method, r.text)
        listed = requests.get(f"{compute}/servers", headers=bob, timeout=30).json()
        assert listed["servers"] == []
    finally:
        requests.delete(f"{compute}/servers/{server_id}", headers=admin, timeout=30)
        poll(lambda: requests.get(f"{compute}/servers/{server_id}", headers=admin,
                                  timeout=30).status_code == 404, 90, "the delete")

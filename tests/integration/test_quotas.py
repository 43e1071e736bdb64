"""Quotas through the real APIs (SQLite and a real MariaDB): each limit's refusal with
its upstream answer, updates by admins only, exactly one winner when creations race at
quota-1, and the stock ``openstack quota show/set``.

Hosts are compute service rows written directly (as in test_compute_api): servers
are placed but nothing boots, which is all a quota needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import update

from core.common.timeutil import now
from core.compute.models import ComputeService, Instance
from tests.conftest import ADMIN_PASSWORD, CLIENT_ON_SQLITE, Services
from tests.integration.computeapi import Compute

BIN = Path(sys.executable).parent


@pytest.fixture
def compute(compute: Compute) -> Compute:
    """The shared compute API, with one host of room for 40 m1.tiny."""
    compute.add_host("h1", slots=40)
    return compute


def project_id(services: Services, name: str) -> str:
    found = services.call("GET", "identity", f"/v3/projects?name={name}").json()["projects"]
    assert len(found) == 1
    return str(found[0]["id"])


def set_compute(compute: Compute, project: str, token: str | None = None,
                **values: Any) -> requests.Response:
    return compute.call("PUT", f"/os-quota-sets/{project}", token,
                        json={"quota_set": values})


def set_network(services: Services, project: str, token: str | None = None,
                **values: Any) -> requests.Response:
    return services.call("PUT", "network", f"/v2.0/quotas/{project}", token,
                         json={"quota": values})


def provider_net(services: Services) -> str:
    nets = services.call("GET", "network", "/v2.0/networks?name=provider").json()["networks"]
    return str(nets[0]["id"])


def test_server_quotas_refuse_with_novas_403(compute: Compute) -> None:
    """instances, cores and ram each refuse the server that would pass them, with
    Nova's TooManyInstances text; /limits shows the real limits and usage."""
    services = compute.services
    member = services.member("qp", "qu")
    pid = project_id(services, "qp")
    assert set_compute(compute, pid, instances=2).status_code == 200
    assert [compute.boot(f"s{i}", member).status_code for i in range(2)] == [202, 202]
    over = compute.boot("s2", member)
    assert over.status_code == 403, over.text
    assert over.json()["forbidden"]["message"] == (
        "Quota exceeded for instances: Requested 1, but already used 2 of 2 instances")

    assert set_compute(compute, pid, instances=-1, cores=2).status_code == 200
    over = compute.boot("s2", member)
    assert over.status_code == 403 and over.json()["forbidden"]["message"] == (
        "Quota exceeded for cores: Requested 1, but already used 2 of 2 cores")

    assert set_compute(compute, pid, cores=-1, ram=600).status_code == 200
    over = compute.boot("s2", member)
    assert over.status_code == 403 and over.json()["forbidden"]["message"] == (
        "Quota exceeded for ram: Requested 256, but already used 512 of 600 ram")
    assert set_compute(compute, pid, ram=768).status_code == 200
    assert compute.boot("s2", member).status_code == 202

    # no room for the server's port: Nova's 403, and no server in ERROR left behind
    assert set_network(services, pid, port=3).status_code == 200
    over = compute.boot("s3", member)
    assert over.status_code == 403 and over.json()["forbidden"]["message"] == (
        "Maximum number of ports exceeded")
    absolute = compute.call("GET", "/limits", member).json()["limits"]["absolute"]
    assert (absolute["maxTotalInstances"], absolute["totalInstancesUsed"]) == (-1, 3)
    assert (absolute["maxTotalCores"], absolute["totalCoresUsed"]) == (-1, 3)
    assert (absolute["maxTotalRAMSize"], absolute["totalRAMUsed"]) == (768, 768)
    # refused creations left nothing behind
    listed = compute.call("GET", "/servers", member).json()["servers"]
    assert sorted(s["name"] for s in listed) == ["s0", "s1", "s2"]


def test_an_evacuation_at_the_quota_is_not_counted_again(compute: Compute) -> None:
    """A project at its instances, cores and RAM limits: its server is still evacuated
    off a dead host (the move makes no new server), and usage stays what it was."""
    services = compute.services
    member = services.member("qe", "qe-user")
    pid = project_id(services, "qe")
    assert set_compute(compute, pid, instances=1, cores=1, ram=256).status_code == 200
    booted = compute.boot("pet", member)
    assert booted.status_code == 202, booted.text
    server_id = booted.json()["server"]["id"]
    with services.db.session() as s:  # it ran on h1; then h1 died and was fenced
        s.execute(update(Instance).where(Instance.id == server_id).values(
            vm_state="active", task_state=None, updated_at=now()))
        s.execute(update(ComputeService).where(ComputeService.host == "h1").values(
            forced_down=True))
    compute.add_host("h2")
    moved = compute.call("POST", f"/servers/{server_id}/action", json={"evacuate": {}},
                         headers={"OpenStack-API-Version": "compute 2.25"})
    assert moved.status_code == 200, moved.text
    detail = compute.call("GET", f"/os-quota-sets/{pid}/detail").json()["quota_set"]
    assert [detail[k]["in_use"] for k in ("instances", "cores", "ram")] == [1, 1, 256]
    assert compute.boot("another", member).status_code == 403


def test_quota_sets_admin_updates_members_read_their_own(compute: Compute) -> None:
    services = compute.services
    member = services.member("qa", "qa-user")
    pid = project_id(services, "qa")
    other = project_id(services, "admin")
    shown = compute.call("GET", f"/os-quota-sets/{pid}", member)
    assert shown.status_code == 200
    assert {k: shown.json()["quota_set"][k] for k in ("id", "instances", "cores", "ram")} == {
        "id": pid, "instances": 10, "cores": 20, "ram": 51200}
    assert compute.call("GET", f"/os-quota-sets/{other}", member).status_code == 403
    refused = set_compute(compute, pid, member, instances=100)
    assert refused.status_code == 403, refused.text
    assert set_network(services, pid, member, port=1000).status_code == 403
    assert compute.call("DELETE", f"/os-quota-sets/{pid}", member).status_code == 403

    # bad input is a 400 naming the field; a limit Haven does not enforce is refused
    assert set_compute(compute, pid, instances="x").status_code == 400
    assert set_compute(compute, pid, instances=-2).status_code == 400
    unknown = set_compute(compute, pid, floating_ips=5)
    assert unknown.status_code == 400 and "floating_ips" in unknown.text
    assert set_network(services, pid, rbac_policy=5).status_code == 400

    # below usage: refused unless forced (Nova), or unless check_limit is off (Neutron)
    assert compute.boot("one", member).status_code == 202
    low = set_compute(compute, pid, instances=0)
    assert low.status_code == 400 and "already used" in low.text
    assert set_compute(compute, pid, instances=0, force=True).status_code == 200
    detail = compute.call("GET", f"/os-quota-sets/{pid}/detail", member).json()["quota_set"]
    assert detail["instances"] == {"limit": 0, "in_use": 1, "reserved": 0}
    defaults = compute.call("GET", f"/os-quota-sets/{pid}/defaults", member).json()
    assert defaults["quota_set"]["instances"] == 10
    assert compute.call("DELETE", f"/os-quota-sets/{pid}").status_code == 202
    assert compute.call("GET", f"/os-quota-sets/{pid}", member).json()[
        "quota_set"]["instances"] == 10

    port = services.call("POST", "network", "/v2.0/ports", member,
                         json={"port": {"network_id": provider_net(services)}})
    assert port.status_code == 201
    low = set_network(services, pid, port=0, check_limit=True)
    assert low.status_code == 400 and "already used" in low.text
    assert set_network(services, pid, port=0).status_code == 200
    listed = services.call("GET", "network", "/v2.0/quotas").json()["quotas"]
    assert [(q["project_id"], q["port"]) for q in listed] == [(pid, 0)]
    assert services.call("GET", "network", "/v2.0/quotas", member).status_code == 403


def test_network_quotas_refuse_with_neutrons_409_over_quota(services: Services) -> None:
    member = services.member("qn", "qn-user")
    pid = project_id(services, "qn")
    assert set_network(services, pid, network=1, port=2).status_code == 200
    made = services.call("POST", "network", "/v2.0/networks", member,
                         json={"network": {"name": "mine"}})
    assert made.status_code == 201
    over = services.call("POST", "network", "/v2.0/networks", member,
                         json={"network": {"name": "two"}})
    assert over.status_code == 409
    assert over.json()["NeutronError"]["type"] == "OverQuota"
    assert over.json()["NeutronError"]["message"] == (
        "Quota exceeded for resources: ['network'].")
    # an admin creating for the project is counted against the project too
    assert services.call("POST", "network", "/v2.0/networks", json={
        "network": {"name": "by-admin", "project_id": pid}}).status_code == 409

    body = {"port": {"network_id": provider_net(services)}}
    assert [services.call("POST", "network", "/v2.0/ports", member, json=body).status_code
            for _ in range(2)] == [201, 201]
    over = services.call("POST", "network", "/v2.0/ports", member, json=body)
    assert over.status_code == 409 and over.json()["NeutronError"] == {
        "type": "OverQuota", "message": "Quota exceeded for resources: ['port'].",
        "detail": ""}
    details = services.call("GET", "network", f"/v2.0/quotas/{pid}/details.json",
                            member).json()["quota"]
    assert details["port"] == {"limit": 2, "used": 2, "reserved": 0}
    assert details["network"] == {"limit": 1, "used": 1, "reserved": 0}
    assert services.call("GET", "network", f"/v2.0/quotas/{pid}/default",
                         member).json()["quota"]["port"] == 500


def haven_quota(services: Services, *args: str) -> subprocess.CompletedProcess[str]:
    """``haven quota ...`` on this cloud's database, as an operator runs it."""
    return subprocess.run(
        [str(BIN / "haven"), "quota", *args, "--state-dir", str(services.cfg.state_path),
         "--set", f"database.url={services.cfg.database_url}"],
        capture_output=True, text=True, timeout=120)


def test_image_quotas_refuse_with_glances_413(services: Services, tmp_path: Path) -> None:
    """image_count_total refuses the image record; image_size_total refuses the data,
    which is then gone and the image queued again; the limits are set with
    ``haven quota set``."""
    member = services.member("qi", "qi-user")
    pid = project_id(services, "qi")
    done = haven_quota(services, "set", "qi", "--image-count-total", "2",
                       "--image-size-total", "1")
    assert done.returncode == 0, done.stderr
    assert "image_count_total" in done.stdout

    def create(name: str) -> requests.Response:
        return services.call("POST", "image", "/v2/images", member, json={
            "name": name, "disk_format": "raw", "container_format": "bare"})

    first, second = create("a"), create("b")
    assert (first.status_code, second.status_code) == (201, 201)
    third = create("c")
    assert third.status_code == 413, third.text
    assert "image_count_total" in third.text

    def upload(image_id: str, size: int) -> requests.Response:
        return services.call("PUT", "image", f"/v2/images/{image_id}/file", member,
                             data=b"\0" * size,
                             headers={"Content-Type": "application/octet-stream"})

    big = upload(first.json()["id"], (1 << 20) + 1)
    assert big.status_code == 413, big.text
    shown = services.call("GET", "image", f"/v2/images/{first.json()['id']}", member).json()
    assert shown["status"] == "queued"
    assert not (services.cfg.image_store_path / first.json()["id"]).exists()
    assert upload(first.json()["id"], 600 << 10).status_code == 204
    # 600 KiB counts as one MiB: the project is at its limit and the next upload is refused
    over = upload(second.json()["id"], 1024)
    assert over.status_code == 413 and "image_size_total" in over.text
    shown = haven_quota(services, "show", pid)
    assert shown.returncode == 0
    rows = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines()[1:]}
    assert rows["image_count_total"] == ["2", "2"] and rows["image_size_total"] == ["1", "1"]
    member_cli = haven_quota(services, "set", "no-such-project", "--ports", "1")
    assert member_cli.returncode == 2 and "no project" in member_cli.stderr


def test_two_uploads_racing_for_the_last_mib_cannot_both_fit(services: Services) -> None:
    """Both uploads start while the project has 1 MiB left, so both pass the check made
    before the data streams in; the exact check when an image becomes active, under the
    project's lock, lets only one of them in. Each chunked body is held after its first
    KiB until the test has seen both images ``saving`` (both past the pre-check), then
    the first is let through to the end, then the second: no timing involved."""
    member = services.member("qs", "qs-user")
    done = haven_quota(services, "set", "qs", "--image-size-total", "1")
    assert done.returncode == 0, done.stderr
    ids = [services.call("POST", "image", "/v2/images", member, json={
        "name": f"i{i}", "disk_format": "raw", "container_format": "bare"}).json()["id"]
        for i in range(2)]
    release = [threading.Event() for _ in ids]

    def status(i: int) -> str:
        return str(services.call("GET", "image", f"/v2/images/{ids[i]}", member).json()["status"])

    def body(i: int) -> Iterator[bytes]:
        yield b"\1" * 1024
        assert release[i].wait(timeout=120)
        yield b"\1" * (600 << 10)

    def upload(i: int) -> int:
        return int(services.call("PUT", "image", f"/v2/images/{ids[i]}/file", member,
                                 data=body(i),
                                 headers={"Content-Type": "application/octet-stream"}
                                 ).status_code)

    def until_saving(i: int) -> None:
        for _ in range(600):
            if status(i) == "saving":
                return
            time.sleep(0.05)
        raise AssertionError(f"upload {i} never reached 'saving'")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(upload, 0)
        until_saving(0)
        second = pool.submit(upload, 1)
        until_saving(1)  # both have passed the pre-check with 1 MiB left
        release[0].set()
        assert first.result(timeout=120) == 204
        release[1].set()
        assert second.result(timeout=120) == 413
    assert [status(0), status(1)] == ["active", "queued"]


def race(n: int, make: Any) -> list[int]:
    """``n`` calls of ``make`` released together; their statuses."""
    start = threading.Barrier(n)

    def one(i: int) -> int:
        start.wait(timeout=60)
        return int(make(i).status_code)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_racing_creations_at_quota_minus_one_give_exactly_one_winner(
        compute: Compute) -> None:
    """Eight servers, then eight ports, created at once with room for one more of each:
    exactly one succeeds, the rest are refused, and usage ends at the limit. Each
    creation counts and inserts in one transaction serialised on the project's lock
    row; without that, several count the same usage and all insert."""
    services = compute.services
    member = services.member("qr", "qr-user")
    pid = project_id(services, "qr")
    assert set_compute(compute, pid, instances=3).status_code == 200
    assert [compute.boot(f"pre{i}", member).status_code for i in range(2)] == [202, 202]
    statuses = race(8, lambda i: compute.boot(f"r{i}", member))
    assert Counter(statuses) == Counter({202: 1, 403: 7}), statuses
    detail = compute.call("GET", f"/os-quota-sets/{pid}/detail").json()["quota_set"]
    assert detail["instances"]["in_use"] == 3

    # each server has a port in the project: 3 used, room for one more
    assert set_network(services, pid, port=4).status_code == 200
    body = {"port": {"network_id": provider_net(services)}}
    statuses = race(8, lambda i: services.call("POST", "network", "/v2.0/ports", member,
                                               json=body))
    assert Counter(statuses) == Counter({201: 1, 409: 7}), statuses
    used = services.call("GET", "network", f"/v2.0/quotas/{pid}/details").json()["quota"]
    assert used["port"]["used"] == 4

    # a project that never had a creation checked: its lock row is made by the racers
    # themselves (concurrent upserts of one new row)
    fresh = services.member("qr2", "qr2-user")
    fresh_pid = project_id(services, "qr2")
    assert set_network(services, fresh_pid, port=1).status_code == 200
    statuses = race(8, lambda i: services.call("POST", "network", "/v2.0/ports", fresh,
                                               json=body))
    assert Counter(statuses) == Counter({201: 1, 409: 7}), statuses


def openstack_cli(services: Services, *args: str, user: str = "admin",
                  password: str = ADMIN_PASSWORD, project: str = "admin"
                  ) -> subprocess.CompletedProcess[str]:
    """The stock ``openstack`` CLI; credentials in its environment, not its arguments."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_AUTH_URL=f"{services.url('identity')}/v3", OS_USERNAME=user,
               OS_PASSWORD=password, OS_PROJECT_NAME=project, OS_USER_DOMAIN_ID="default",
               OS_PROJECT_DOMAIN_ID="default", OS_REGION_NAME="RegionOne",
               OS_IDENTITY_API_VERSION="3", OS_INTERFACE="public")
    return subprocess.run([str(BIN / "openstack"), *args], capture_output=True, text=True,
                          env=env, timeout=120)


@CLIENT_ON_SQLITE
def test_stock_openstack_quota_show_and_set(compute: Compute) -> None:
    """``openstack quota set --instances 3 --ports 10 PROJECT`` and ``quota show`` work
    unchanged (there is no volume service in the catalog: the CLI skips it); a member
    is refused."""
    services = compute.services
    member = services.member("qc", "qc-user")
    done = openstack_cli(services, "quota", "set", "--instances", "3", "--ports", "10", "qc")
    assert done.returncode == 0, done.stderr
    shown = openstack_cli(services, "quota", "show", "qc", "-f", "value")
    assert shown.returncode == 0, shown.stderr
    rows = dict(line.rsplit(" ", 1) for line in shown.stdout.splitlines())
    assert (rows["instances"], rows["ports"], rows["cores"], rows["ram"],
            rows["networks"]) == ("3", "10", "20", "51200", "100")
    assert compute.boot("counted", member).status_code == 202
    usage = openstack_cli(services, "quota", "show", "--usage", "qc", "-f", "json")
    assert usage.returncode == 0, usage.stderr
    rows_used = {r["Resource"]: (r["Limit"], r["In Use"]) for r in json.loads(usage.stdout)}
    assert (rows_used["instances"], rows_used["cores"], rows_used["ports"]) == (
        (3, 1), (20, 1), (10, 1))
    limits = openstack_cli(services, "limits", "show", "--absolute", "--project", "qc",
                           "-f", "value")
    assert limits.returncode == 0, limits.stderr
    assert "\ninstances 3\n" in limits.stdout and "\ninstances_used 1\n" in limits.stdout
    refused = openstack_cli(services, "quota", "set", "--instances", "30", "qc",
                            user="qc-user", password="pw", project="qc")
    assert refused.returncode != 0 and "403" in refused.stderr, refused.stderr
    own = openstack_cli(services, "quota", "show", "-f", "value", user="qc-user",
                        password="pw", project="qc")  # its own project, from its token
    assert own.returncode == 0, own.stderr
    assert "instances 3" in own.stdout.splitlines()

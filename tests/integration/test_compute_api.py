"""The compute API without a hypervisor: microversions, flavors, services, hypervisors,
server groups, metadata and the action state machine (SQLite and a real MariaDB).

Hosts are compute service rows written directly (what an agent registers), so
placement is real but nothing boots; booting is the agent's and the
acceptance tests' business.
"""

from __future__ import annotations

import faulthandler

import requests

from core.common.timeutil import now
from core.compute.models import ComputeService
from tests.integration.computeapi import Compute


def test_microversions_are_echoed_and_bounded(compute: Compute) -> None:
    plain = compute.call("GET", "/flavors")
    assert plain.headers["OpenStack-API-Version"] == "compute 2.1"
    asked = compute.call("GET", "/flavors", headers={"OpenStack-API-Version": "compute 2.11"})
    assert asked.headers["OpenStack-API-Version"] == "compute 2.11"
    assert asked.headers["X-OpenStack-Nova-API-Version"] == "2.11"
    latest = compute.call("GET", "/flavors", headers={"X-OpenStack-Nova-API-Version": "latest"})
    assert latest.headers["X-OpenStack-Nova-API-Version"] == "2.25"
    assert compute.call("GET", "/flavors", headers={
        "OpenStack-API-Version": "compute 2.99"}).status_code == 406
    assert compute.call("GET", "/flavors", headers={
        "OpenStack-API-Version": "compute two"}).status_code == 400
    versions = requests.get(compute.url.rsplit("/", 1)[0] + "/", timeout=10).json()
    assert versions["versions"][0]["version"] == "2.25"


def test_flavors_are_public_to_read_and_admin_to_manage(compute: Compute) -> None:
    member = compute.services.member("fp", "fu")
    names = {f["name"] for f in compute.call("GET", "/flavors/detail", member).json()["flavors"]}
    assert {"m1.tiny", "m1.small"} <= names
    body = {"flavor": {"name": "big", "ram": 2048, "vcpus": 2, "disk": 10}}
    assert compute.call("POST", "/flavors", member, json=body).status_code == 403
    made = compute.call("POST", "/flavors", json=body)
    assert made.status_code == 200 and made.json()["flavor"]["ram"] == 2048
    assert compute.call("POST", "/flavors", json=body).status_code == 409
    bad = compute.call("POST", "/flavors", json={"flavor": {"name": "x", "ram": 0, "vcpus": 1,
                                                            "disk": 1}})
    assert bad.status_code == 400 and "flavor.ram" in bad.text
    assert compute.call("DELETE", f"/flavors/{made.json()['flavor']['id']}").status_code == 202


def test_services_disable_and_force_down_steer_placement(compute: Compute) -> None:
    compute.add_host("h1")
    services = compute.call("GET", "/os-services").json()["services"]
    assert [(s["host"], s["state"], s["status"]) for s in services] == [("h1", "up",
                                                                         "enabled")]
    assert compute.call("PUT", "/os-services/disable",
                        json={"host": "h1", "binary": "nova-compute"}).status_code == 200
    booted = compute.boot("nowhere")  # accepted, but ERROR: nothing enabled
    assert booted.status_code == 202, booted.text
    [server] = compute.call("GET", "/servers/detail").json()["servers"]
    assert server["id"] == booted.json()["server"]["id"]
    assert server["status"] == "ERROR" and "No valid host" in server["fault"]["message"]
    assert compute.call("PUT", "/os-services/enable",
                        json={"host": "h1", "binary": "nova-compute"}).status_code == 200
    forced = compute.call("PUT", "/os-services/force-down", json={
        "host": "h1", "binary": "nova-compute", "forced_down": True})
    assert forced.status_code == 404  # needs 2.11
    forced = compute.call("PUT", "/os-services/force-down", json={
        "host": "h1", "binary": "nova-compute", "forced_down": True},
        headers={"OpenStack-API-Version": "compute 2.11"})
    assert forced.status_code == 200
    hyp = compute.call("GET", "/os-hypervisors/detail").json()["hypervisors"][0]
    assert hyp["state"] == "down" and hyp["memory_mb"] == 2560
    member = compute.services.member("sp", "su")
    assert compute.call("GET", "/os-services", member).status_code == 403
    assert compute.call("PUT", "/os-services/disable", json={"host": "nope"}).status_code == 404


def test_anti_affinity_group_spreads_and_then_refuses(compute: Compute) -> None:
    compute.add_host("h1")
    compute.add_host("h2")
    group = compute.call("POST", "/os-server-groups", json={"server_group": {
        "name": "g", "policies": ["anti-affinity"]}}).json()["server_group"]
    hints = {"os:scheduler_hints": {"group": group["id"]}}
    ids = [compute.boot(f"m{i}", **hints).json()["server"]["id"] for i in range(3)]
    detail = {s["id"]: s for s in compute.call(
        "GET", "/servers/detail").json()["servers"]}
    hosts = [detail[i]["OS-EXT-SRV-ATTR:host"] for i in ids]
    assert sorted(h for h in hosts if h) == ["h1", "h2"]
    assert [detail[i]["status"] for i in ids].count("ERROR") == 1
    members = compute.call("GET", f"/os-server-groups/{group['id']}").json()
    assert set(members["server_group"]["members"]) == set(ids)
    bad = compute.call("POST", "/os-server-groups", json={"server_group": {
        "name": "g", "policies": ["sideways"]}})
    assert bad.status_code == 400


def test_metadata_and_the_action_state_machine(compute: Compute) -> None:
    compute.add_host("h1")
    resp = compute.call("POST", "/servers", json={"server": {
        "name": "vm", "imageRef": compute.image, "flavorRef": "1", "networks": "auto",
        "metadata": {"ha:priority": "10"}}})
    server_id = resp.json()["server"]["id"]
    meta = compute.call("GET", f"/servers/{server_id}/metadata").json()["metadata"]
    assert meta == {"ha:priority": "10"}
    assert compute.call("PUT", f"/servers/{server_id}/metadata/ha:enabled",
                        json={"meta": {"ha:enabled": "false"}}).status_code == 200
    assert compute.call("POST", f"/servers/{server_id}/metadata",
                        json={"metadata": {"x": "1"}}).json()["metadata"] == {
        "ha:priority": "10", "ha:enabled": "false", "x": "1"}
    assert compute.call("DELETE", f"/servers/{server_id}/metadata/x").status_code == 204
    assert compute.call("GET", f"/servers/{server_id}/metadata/x").status_code == 404
    bad = compute.call("POST", f"/servers/{server_id}/metadata", json={"metadata": {"k": 1}})
    assert bad.status_code == 400
    # still building (no agent here): stopping is a conflict, not a crash
    assert compute.call("POST", f"/servers/{server_id}/action",
                        json={"os-stop": None}).status_code == 409
    assert compute.call("POST", f"/servers/{server_id}/action",
                        json={"reboot": {"type": "SIDEWAYS"}}).status_code == 400
    assert compute.call("POST", f"/servers/{server_id}/action",
                        json={"levitate": {}}).status_code == 400
    # evacuating from a host that is up is refused, as in Nova
    assert compute.call("POST", f"/servers/{server_id}/action",
                        json={"evacuate": {}}).status_code == 409


def test_name_filter_is_a_regex_search_in_linear_time(compute: Compute) -> None:
    """Regression: ``?name=`` went to Python's backtracking ``re``; ``(a+)+$`` against a
    long name ran for ages holding the GIL, freezing every API of the process. The
    watchdog (a C thread: it fires even while the GIL is held) turns a hang into a
    failure with every thread's traceback."""
    for name in ("a" * 254 + "!", "web-01", "db-01"):
        assert compute.boot(name).status_code == 202
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        crafted = compute.call("GET", "/servers", params={"name": "(a+)+$"})
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert crafted.status_code == 200 and crafted.json()["servers"] == []
    # Nova's semantics: a regular expression searched anywhere in the name
    found = compute.call("GET", "/servers/detail", params={"name": "^(web|db)-0[1-9]$"})
    assert sorted(s["name"] for s in found.json()["servers"]) == ["db-01", "web-01"]
    assert [s["name"] for s in compute.call("GET", "/servers", params={
        "name": "eb"}).json()["servers"]] == ["web-01"]
    for pattern in ("(?=web)", "[", "(a)\\1"):
        bad = compute.call("GET", "/servers", params={"name": pattern})
        assert bad.status_code == 400 and "'name'" in bad.json()["badRequest"]["message"], (
            pattern, bad.text)


def test_batch_evacuate_moves_what_fits_and_answers_per_server(compute: Compute) -> None:
    """``POST /os-hosts/<host>/evacuate`` (the controller's call): per server its new host
    or the error a single evacuate would give; a refused server is left as it was while
    its batch-mates move; bad bodies are 400, members 403. SQLite here (the all-in-one);
    tests/integration/test_scheduling_race.py races batches on MariaDB."""
    from sqlalchemy import update

    from core.compute import states
    from core.compute.models import Instance

    compute.add_host("h1")
    ids = [compute.boot(f"e{i}").json()["server"]["id"] for i in range(3)]
    compute.services.db.run_in_transaction(lambda s: s.execute(
        update(Instance).where(Instance.id.in_(ids)).values(vm_state=states.ACTIVE,
                                                            task_state=None)))
    up = compute.call("POST", "/os-hosts/h1/evacuate", json={"evacuate": {"servers": ids}})
    assert up.status_code == 409 and "not forced down" in up.text

    compute.add_host("h2", slots=2)
    forced = compute.call("PUT", "/os-services/force-down", json={
        "host": "h1", "binary": "nova-compute", "forced_down": True},
        headers={"OpenStack-API-Version": "compute 2.11"})
    assert forced.status_code == 200
    asked = [*ids, "00000000-0000-0000-0000-000000000000"]
    resp = compute.call("POST", "/os-hosts/h1/evacuate", json={"evacuate": {"servers": asked}})
    assert resp.status_code == 200, resp.text
    items = resp.json()["evacuations"]
    assert [x["server_id"] for x in items] == asked
    assert [x.get("host") for x in items[:2]] == ["h2", "h2"]
    assert items[2]["error"]["code"] == 409 and "No valid host" in items[2]["error"]["message"]
    assert items[3]["error"]["code"] == 404
    detail = {s["id"]: s for s in compute.call("GET", "/servers/detail").json()["servers"]}
    assert [detail[i]["OS-EXT-SRV-ATTR:host"] for i in ids] == ["h2", "h2", "h1"]
    assert detail[ids[2]]["OS-EXT-STS:task_state"] is None  # rolled back, not half-moved
    assert [detail[i]["OS-EXT-STS:task_state"] for i in ids[:2]] == ["rebuilding"] * 2
    hosts = {h["hypervisor_hostname"]: h for h in compute.call(
        "GET", "/os-hypervisors/detail").json()["hypervisors"]}
    assert hosts["h2"]["memory_mb_used"] == 2 * 256 and hosts["h1"]["memory_mb_used"] == 256

    for body in ({}, {"evacuate": {}}, {"evacuate": {"servers": []}},
                 {"evacuate": {"servers": [ids[2], ids[2]]}}, {"evacuate": {"servers": [7]}},
                 {"evacuate": {"servers": "x"}}):
        bad = compute.call("POST", "/os-hosts/h1/evacuate", json=body)
        assert bad.status_code == 400 and ("servers" in bad.text or "evacuate" in bad.text), (
            body, bad.text)
    member = compute.services.member("bp", "bu")
    assert compute.call("POST", "/os-hosts/h1/evacuate", member,
                        json={"evacuate": {"servers": [ids[2]]}}).status_code == 403


def test_server_list_pages_are_bounded_by_max_limit(compute: Compute) -> None:
    """Regression: ``limit`` had no maximum (``?limit=1000000`` read and rendered every
    server). It is now clamped to ``api.max_limit`` (none given: the maximum), and a full
    page links to the next one, so following links still sees every server."""
    ids = {compute.boot(f"p{i}").json()["server"]["id"] for i in range(5)}
    compute.services.cfg.api.max_limit = 2
    try:
        seen: list[str] = []
        url: str | None = compute.url + "/servers/detail?limit=1000"
        while url:
            page = requests.get(url, headers={"X-Auth-Token": compute.services.admin_token},
                                timeout=30).json()
            assert len(page["servers"]) <= 2
            seen += [s["id"] for s in page["servers"]]
            url = next((link["href"] for link in page.get("servers_links", [])
                        if link["rel"] == "next"), None)
        assert sorted(seen) == sorted(ids)
        assert len(compute.call("GET", "/servers").json()["servers"]) == 2
        for bad in ("-1", "many"):
            answer = compute.call("GET", "/servers", params={"limit": bad})
            assert answer.status_code == 400 and "'limit'" in answer.text
    finally:
        compute.services.cfg.api.max_limit = 1000


def test_metadata_cap_holds_on_the_per_item_path(compute: Compute) -> None:
    """Regression: PUT /servers/{id}/metadata/{key} added items past the 128 cap."""
    full = {f"k{i}": "v" for i in range(128)}
    server = compute.boot("m").json()["server"]["id"]
    assert compute.call("PUT", f"/servers/{server}/metadata",
                        json={"metadata": full}).status_code == 200
    over = compute.call("PUT", f"/servers/{server}/metadata/k128", json={"meta": {"k128": "v"}})
    assert over.status_code == 403, over.text
    assert over.json()["forbidden"]["message"] == "Maximum number of metadata items exceeds 128"
    merged = compute.call("POST", f"/servers/{server}/metadata",
                          json={"metadata": {"k128": "v"}})
    assert merged.status_code == 403
    assert len(compute.call("GET", f"/servers/{server}/metadata").json()["metadata"]) == 128
    # changing an existing item at the cap is fine
    assert compute.call("PUT", f"/servers/{server}/metadata/k0",
                        json={"meta": {"k0": "w"}}).status_code == 200


def test_private_flavors_are_for_admins_only(compute: Compute) -> None:
    """Regression: a flavor with ``os-flavor-access:is_public`` false could be shown and
    booted by any project. Haven has no per-project flavor access list: private flavors
    are an administrator's (404 to others on show, 400 "could not be found" on boot, as
    Nova answers a flavor the caller has no access to)."""
    compute.add_host("h1")
    made = compute.call("POST", "/flavors", json={"flavor": {
        "name": "secret", "ram": 256, "vcpus": 1, "disk": 1, "id": "private-1",
        "os-flavor-access:is_public": False}})
    assert made.status_code == 200, made.text
    member = compute.services.member("pf", "pu")
    assert compute.call("GET", "/flavors/private-1", member).status_code == 404
    assert compute.call("GET", "/flavors/private-1/os-extra_specs", member).status_code == 404
    listed = compute.call("GET", "/flavors/detail", member).json()["flavors"]
    assert "private-1" not in {f["id"] for f in listed}
    booted = compute.call("POST", "/servers", member, json={"server": {
        "name": "x", "imageRef": compute.image, "flavorRef": "private-1", "networks": "auto"}})
    assert booted.status_code == 400 and "private-1 could not be found" in booted.text
    assert compute.call("GET", "/flavors/private-1").status_code == 200
    assert compute.call("POST", "/servers", json={"server": {
        "name": "y", "imageRef": compute.image, "flavorRef": "private-1",
        "networks": "auto"}}).status_code == 202


def test_ha_priority_is_an_administrators_key(compute: Compute) -> None:
    """Regression: any tenant could set ``ha:priority`` on its servers and so be evacuated
    first when capacity is short. Only admins set, change or remove it now."""
    member = compute.services.member("hp", "hu")
    with_priority = compute.call("POST", "/servers", member, json={"server": {
        "name": "vip", "imageRef": compute.image, "flavorRef": "1", "networks": "auto",
        "metadata": {"ha:priority": "100"}}})
    assert with_priority.status_code == 403 and "ha:priority" in with_priority.text
    server = compute.boot("plain", member).json()["server"]["id"]
    path = f"/servers/{server}/metadata"
    refused = [
        compute.call("PUT", f"{path}/ha:priority", member, json={"meta": {"ha:priority": "9"}}),
        compute.call("POST", path, member, json={"metadata": {"ha:priority": "9"}}),
        compute.call("PUT", path, member, json={"metadata": {"ha:priority": "9"}}),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403], [r.text for r in refused]
    # an admin sets it; the tenant can neither change nor drop it, but keeps its own keys
    assert compute.call("PUT", f"{path}/ha:priority",
                        json={"meta": {"ha:priority": "5"}}).status_code == 200
    assert compute.call("DELETE", f"{path}/ha:priority", member).status_code == 403
    assert compute.call("PUT", path, member, json={"metadata": {"x": "1"}}).status_code == 403
    kept = compute.call("PUT", path, member, json={"metadata": {"ha:priority": "5", "x": "1"}})
    assert kept.status_code == 200
    assert compute.call("PUT", f"{path}/ha:enabled", member,
                        json={"meta": {"ha:enabled": "false"}}).status_code == 200
    assert compute.call("GET", path, member).json()["metadata"] == {
        "ha:priority": "5", "x": "1", "ha:enabled": "false"}
    assert compute.call("DELETE", f"{path}/ha:priority").status_code == 204


def test_evacuation_requires_the_source_service_forced_down(compute: Compute) -> None:
    """Only a forced-down service (the controller after a confirmed fence, or an
    operator's ``openstack compute service set --down``) lets instances be evacuated
    from its host: a fresh heartbeat, a stale one (a crashed agent, a lost database
    path) and a host without a service row are all refused with 409, by the single
    action and the batch, and nothing moves."""
    from sqlalchemy import delete, update

    from core.compute import states
    from core.compute.models import Instance

    compute.add_host("h1")
    ids = [compute.boot(f"f{i}").json()["server"]["id"] for i in range(3)]
    compute.services.db.run_in_transaction(lambda s: s.execute(
        update(Instance).where(Instance.id.in_(ids)).values(vm_state=states.ACTIVE,
                                                            task_state=None)))
    compute.add_host("h2")

    def hosts() -> list[str]:
        detail = {s["id"]: s for s in compute.call("GET", "/servers/detail").json()["servers"]}
        return [detail[i]["OS-EXT-SRV-ATTR:host"] for i in ids]

    def refused(host: str) -> None:
        single = compute.call("POST", f"/servers/{ids[0]}/action", json={"evacuate": {}})
        assert single.status_code == 409, single.text
        assert "not forced down" in single.json()["conflictingRequest"]["message"]
        batch = compute.call("POST", f"/os-hosts/{host}/evacuate",
                             json={"evacuate": {"servers": ids[1:]}})
        assert batch.status_code == 409, batch.text
        assert "not forced down" in batch.json()["conflictingRequest"]["message"]

    refused("h1")  # heartbeat fresh
    down_time = compute.services.cfg.compute.service_down_time
    compute.services.db.run_in_transaction(lambda s: s.execute(
        update(ComputeService).where(ComputeService.host == "h1").values(
            last_seen=now() - 10 * down_time)))
    services = compute.call("GET", "/os-services").json()["services"]
    assert next(x for x in services if x["host"] == "h1")["state"] == "down"
    refused("h1")  # heartbeat stale, not forced down
    assert hosts() == ["h1"] * 3

    forced = compute.call("PUT", "/os-services/force-down", json={
        "host": "h1", "binary": "nova-compute", "forced_down": True},
        headers={"OpenStack-API-Version": "compute 2.11"})
    assert forced.status_code == 200, forced.text
    assert compute.call("POST", f"/servers/{ids[0]}/action",
                        json={"evacuate": {}}).status_code == 200
    batch = compute.call("POST", "/os-hosts/h1/evacuate", json={"evacuate": {"servers": ids[1:]}})
    assert batch.status_code == 200, batch.text
    assert [x.get("host") for x in batch.json()["evacuations"]] == ["h2", "h2"]
    assert hosts() == ["h2"] * 3

    # a host without a compute service row: nothing says it is off
    compute.services.db.run_in_transaction(lambda s: s.execute(
        update(Instance).where(Instance.id.in_(ids)).values(host="ghost", task_state=None)))
    compute.services.db.run_in_transaction(lambda s: s.execute(
        delete(ComputeService).where(ComputeService.host == "ghost")))
    refused("ghost")
    assert hosts() == ["ghost"] * 3

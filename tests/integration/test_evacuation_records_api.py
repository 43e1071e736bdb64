"""The evacuation records API, the HA deployment's extension of the compute API: mounted
where the deployment's extensions are handed in, absent from a bare cloud's compute API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from core.common.bus import make_bus
from core.common.server import AppServers, Listener
from core.compute.api import create_app
from ha.extensions import HA_EXTENSIONS
from tests.conftest import Services, free_port


class Compute:
    """A compute API on the test cloud, with the given extensions."""

    def __init__(self, services: Services, extensions: Any, listen: str) -> None:
        self.services = services
        self.bus = make_bus("local")
        self.servers = AppServers([Listener("compute", listen, create_app(
            services.cfg, services.db, self.bus, extensions=extensions))])
        self.servers.start()
        self.url = f"http://{listen}/v2.1"

    def call(self, method: str, path: str, token: str | None = None) -> requests.Response:
        return requests.request(method, self.url + path, timeout=30,
                                headers={"X-Auth-Token": token or self.services.admin_token})

    def stop(self) -> None:
        self.servers.stop()
        self.bus.close()


@pytest.fixture
def compute(services: Services) -> Iterator[Compute]:
    c = Compute(services, HA_EXTENSIONS.compute_api, services.cfg.compute.listen)
    yield c
    c.stop()


def test_evacuation_records_are_listed_and_shown_to_admins_only(compute: Compute) -> None:
    """The controller's records through the admin API: phases as seconds after detection,
    every instance's outcome; members get 403, unknown ids 404, bad limits 400."""
    from ha.evacuator.env import EventState, InstanceRecord, InstanceState
    from ha.evacuator.models import EvacuationEvent, instance_row

    def unit(s: Any) -> int:
        ev = EvacuationEvent(host="hv9", open_host=None, state=EventState.DONE.value,
                             detected_at=1000.0, alive_at=998.0, fenced_at=1004.5,
                             fence_confirmed_at=1005.0, first_rebuild_at=1005.5,
                             last_rebuild_at=1006.0, all_active_at=1009.25, alerts="",
                             storm_override=False)
        s.add(ev)
        s.flush()
        s.add(instance_row(InstanceRecord(event_id=ev.id, instance_id="i-1", name="pet",
                                          state=InstanceState.DONE, source="hv9",
                                          target="hv2", attempts=1)))
        return ev.id
    event_id = compute.services.db.run_in_transaction(unit)
    listed = compute.call("GET", "/os-evacuations").json()["evacuations"]
    assert [e["id"] for e in listed] == [event_id]
    assert listed[0]["phases_s"]["all active"] == 9.25
    shown = compute.call("GET", f"/os-evacuations/{event_id}").json()["evacuation"]
    assert shown["state"] == "done" and shown["host"] == "hv9"
    assert [(r["instance_id"], r["state"], r["target"]) for r in shown["instances"]] == [
        ("i-1", "done", "hv2")]
    member = compute.services.member("ep", "eu")
    assert compute.call("GET", "/os-evacuations", member).status_code == 403
    assert compute.call("GET", "/os-evacuations/999999").status_code == 404
    assert compute.call("GET", "/os-evacuations?limit=0").status_code == 400


def test_a_bare_cloud_compute_api_has_no_evacuation_records(services: Services) -> None:
    """Without the HA deployment's extensions the route is not there (404, as any
    unknown path), while the compute API itself answers."""
    bare = Compute(services, (), f"127.0.0.1:{free_port()}")
    try:
        assert bare.call("GET", "/flavors").status_code == 200
        assert bare.call("GET", "/os-evacuations").status_code == 404
    finally:
        bare.stop()


def test_the_haven_command_mounts_it_where_it_serves_compute(services: Services) -> None:
    """``haven serve compute`` (what the OCF agents start on cluster nodes), the
    all-in-one and ``haven db upgrade``/``bootstrap`` carry the HA deployment's
    extensions; the cloud's own commands alone carry none."""
    from core import cli as core_cli
    from ha.cli import build_parser

    for argv in (["serve", "compute"], ["all-in-one"], ["db", "upgrade"], ["bootstrap"]):
        args = build_parser().parse_args(argv)
        assert core_cli.extensions_of(args) is HA_EXTENSIONS, argv
    args = build_parser().parse_args(["serve", "compute"])
    cfg = services.cfg
    app = core_cli.app_factory(cfg, "compute", core_cli.extensions_of(args))()
    assert "/v2.1/os-evacuations/<event_id>" in {route.rule for route in app.routes}
    bare = core_cli.app_factory(cfg, "compute")()
    assert "/v2.1/os-evacuations" not in {route.rule for route in bare.routes}

"""Every refusal of an evacuation carries its code (core/compute/errors.py), and the
evacuation controller's mapping (ha/evacuator/real.py) reads the code, not the message.

The compute API runs for real on SQLite (placement is real, nothing boots). Two codes
need a race no single request can make (a claim lost to another placement every time,
a server group contended past its bound): for those a SQLAlchemy load hook makes this
process read rows one generation behind, exactly what a concurrent writer does to it.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, update
from sqlalchemy.orm import Session

from core.common.faults import Fault
from core.common.timeutil import now
from core.compute import errors, states
from core.compute.api import ComputeContext
from core.compute.errors import ErrorCode
from core.compute.evacuate import evacuate_instance
from core.compute.models import ComputeService, Instance, ServerGroup
from ha.evacuator.env import Conflict, NoValidHost, TransientError
from ha.evacuator.real import call_error
from tests.integration.computeapi import Compute

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
FORCE_DOWN = {"OpenStack-API-Version": "compute 2.11"}
MISSING = "00000000-0000-0000-0000-000000000000"


def activate(compute: Compute, ids: list[str]) -> None:
    """What an agent would do once the servers booted."""
    compute.services.db.run_in_transaction(lambda s: s.execute(
        update(Instance).where(Instance.id.in_(ids)).values(vm_state=states.ACTIVE,
                                                            task_state=None)))


def force_down(compute: Compute, host: str) -> None:
    resp = compute.call("PUT", "/os-services/force-down", headers=FORCE_DOWN, json={
        "host": host, "binary": "nova-compute", "forced_down": True})
    assert resp.status_code == 200, resp.text


def fault_type(resp: Any) -> str:
    """The code of a refused request (Nova's error body, plus Haven's ``type``)."""
    body = resp.json()
    (inner,) = body.values()
    return str(inner["type"])


def test_batch_answers_carry_one_code_per_refused_server(compute: Compute) -> None:
    """One batch with a server that moves and one of each per-server refusal; each
    error's code maps to the controller's class, whatever its message says."""
    compute.add_host("h1", slots=5)
    ids = [compute.boot(f"c{i}").json()["server"]["id"] for i in range(5)]
    moves, full, building, elsewhere, _ = ids
    activate(compute, [moves, full, elsewhere])  # `building` stays BUILD/spawning
    compute.services.db.run_in_transaction(lambda s: s.execute(
        update(Instance).where(Instance.id == elsewhere).values(host="h9")))

    whole = compute.call("POST", "/os-hosts/h1/evacuate",
                         json={"evacuate": {"servers": [moves]}})
    assert whole.status_code == 409 and fault_type(whole) == ErrorCode.SOURCE_NOT_DOWN
    assert isinstance(call_error(whole.status_code, whole.text), Conflict)

    compute.add_host("h2", slots=1)
    force_down(compute, "h1")
    asked = [moves, full, building, elsewhere, MISSING]
    resp = compute.call("POST", "/os-hosts/h1/evacuate", json={"evacuate": {"servers": asked}})
    assert resp.status_code == 200, resp.text
    items = {x["server_id"]: x for x in resp.json()["evacuations"]}
    assert items[moves].get("host") == "h2"
    codes = {i: items[i]["error"]["type"] for i in asked if i != moves}
    assert codes == {full: "no_valid_host", building: "not_evacuable",
                     elsewhere: "not_on_source", MISSING: "not_found"}, resp.text
    assert [items[i]["error"]["code"] for i in (full, building, elsewhere, MISSING)] == [
        409, 409, 409, 404]
    expected = {full: NoValidHost, building: Conflict, elsewhere: Conflict, MISSING: Conflict}
    for server_id, kind in expected.items():
        error = items[server_id]["error"]
        # the message is not read: a misleading one changes nothing
        mapped = call_error(error["code"], "No valid host was found", error["type"])
        assert type(mapped) is kind, (server_id, error)


def test_single_evacuate_refusals_carry_their_codes(compute: Compute) -> None:
    compute.add_host("h1")
    server = compute.boot("s").json()["server"]["id"]
    activate(compute, [server])
    refused = compute.call("POST", f"/servers/{server}/action", json={"evacuate": {}})
    assert refused.status_code == 409 and fault_type(refused) == ErrorCode.SOURCE_NOT_DOWN
    force_down(compute, "h1")
    own = compute.call("POST", f"/servers/{server}/action", json={"evacuate": {"host": "h1"}})
    assert own.status_code == 400 and fault_type(own) == ErrorCode.BAD_TARGET
    nowhere = compute.call("POST", f"/servers/{server}/action", json={"evacuate": {}})
    assert nowhere.status_code == 409 and fault_type(nowhere) == ErrorCode.NO_VALID_HOST
    compute.services.db.run_in_transaction(lambda s: s.execute(
        update(Instance).where(Instance.id == server).values(host=None)))
    hostless = compute.call("POST", f"/servers/{server}/action", json={"evacuate": {}})
    assert hostless.status_code == 409 and fault_type(hostless) == ErrorCode.NOT_ON_SOURCE


def placed_on_forced_down_host(compute: Compute, group: str | None = None) -> str:
    """A server ACTIVE on h1, h1 forced down, h2 with room."""
    compute.add_host("h1")
    extra = {"os:scheduler_hints": {"group": group}} if group else {}
    server = compute.boot("r", **extra).json()["server"]["id"]
    activate(compute, [server])
    compute.add_host("h2")
    force_down(compute, "h1")
    return str(server)


def evacuate_in_process(compute: Compute, server: str, sess: Session) -> Fault:
    ctx = ComputeContext(compute.services.cfg, compute.services.db, compute.bus,
                         None)  # type: ignore[arg-type]  # no client call on this path
    inst = sess.get(Instance, server)
    assert inst is not None
    with pytest.raises(Fault) as refused:
        evacuate_instance(ctx, sess, inst, None)
    sess.rollback()
    return refused.value


def test_an_instance_changed_meanwhile_is_in_use(compute: Compute) -> None:
    """The evacuation read the instance, then someone else moved it on: ``in_use``."""
    server = placed_on_forced_down_host(compute)
    with compute.services.db.sessions() as sess:
        inst = sess.get(Instance, server)
        assert inst is not None
        sess.commit()  # the read is done (its values kept): another writer may go on
        compute.services.db.run_in_transaction(lambda s: s.execute(
            update(Instance).where(Instance.id == server).values(updated_at=now() + 5)))
        refused = evacuate_in_process(compute, server, sess)
    assert refused.status == 409 and errors.code_of(refused) is ErrorCode.IN_USE
    assert type(call_error(409, "x", "in_use")) is Conflict


def stale_generations(model: type) -> Any:
    """Make every load of ``model`` in this process read its generation one behind (a
    concurrent writer bumped it since): each compare-and-swap on it then loses."""
    def behind(target: Any, *_: Any) -> None:
        target.generation = (target.generation or 0) - 1

    event.listen(model, "load", behind)
    event.listen(model, "refresh", behind)

    def undo() -> None:
        event.remove(model, "load", behind)
        event.remove(model, "refresh", behind)
    return undo


def test_every_claim_lost_is_claims_lost(compute: Compute) -> None:
    server = placed_on_forced_down_host(compute)
    undo = stale_generations(ComputeService)
    try:
        with compute.services.db.sessions() as sess:
            refused = evacuate_in_process(compute, server, sess)
    finally:
        undo()
    assert refused.status == 503 and errors.code_of(refused) is ErrorCode.CLAIMS_LOST
    assert type(call_error(503, "x", "claims_lost")) is TransientError


def test_a_group_contended_past_its_bound_is_group_busy(compute: Compute) -> None:
    group = compute.call("POST", "/os-server-groups", json={"server_group": {
        "name": "g", "policies": ["anti-affinity"]}}).json()["server_group"]["id"]
    server = placed_on_forced_down_host(compute, group)
    undo = stale_generations(ServerGroup)
    try:
        with compute.services.db.sessions() as sess:
            refused = evacuate_in_process(compute, server, sess)
    finally:
        undo()
    assert refused.status == 409 and errors.code_of(refused) is ErrorCode.GROUP_BUSY
    assert type(call_error(409, "x", "group_busy")) is Conflict

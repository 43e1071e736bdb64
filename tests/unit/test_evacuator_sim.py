"""The simulator's safety checks catch what they are there to catch: a world
driven wrongly (around the controller) reports the violation."""

from __future__ import annotations

import pytest

from core.compute import states
from core.compute.evacuation_rule import not_evacuable
from ha.evacuator.env import Conflict, FenceEvent, FenceResult
from ha.evacuator.sim import Host, Instance, World


def world() -> World:
    w = World([Host("node1"), Host("node2"), Host("node3")],
              [Instance(id="vm1", name="vm1", host="node3")])
    w.step()
    return w


def run(w: World, seconds: int) -> None:
    for _ in range(seconds):
        w.t += 1
        w.step()


def test_evacuating_an_unfenced_host_is_a_violation_and_runs_the_vm_twice() -> None:
    w = world()
    w.set_network("node3", False)  # partitioned: vm1 still runs there
    w.hosts["node3"].forced_down = True  # the API now accepts the evacuation
    w.hosts["node3"].fence_mode = "fail"
    run(w, 1)
    w.evacuate("vm1", "node3")
    run(w, 6)
    assert any("not fenced" in v for v in w.violations)
    assert any("started on node1 while running on node3" in v for v in w.violations)
    assert any("vm1 runs on node1, node3" in v for v in w.violations)


def test_placing_on_a_host_that_just_died_is_a_violation() -> None:
    """The scheduler trusts a heartbeat for service_down_time: a host dead for a
    second still looks up to it (the controller disables lost hosts for this)."""
    w = world()
    w.power("node3", False)
    run(w, 6)  # node3 lost and fenced
    w.hosts["node3"].forced_down = True
    w.power("node1", False)  # node1 dies; its heartbeat is still fresh
    w.power("node2", False)
    w.evacuate("vm1", "node3")
    assert any("placed on node1, which is dead" in v for v in w.violations)


def test_evacuating_from_the_wrong_host_is_a_violation() -> None:
    w = world()
    with pytest.raises(Conflict):
        w.evacuate("vm1", "node2")
    assert w.violations == ["t=0: evacuate of vm1 from node2, but it is on node3"]


def test_the_api_refuses_unless_the_source_service_is_forced_down() -> None:
    """The product's rule (core.compute.evacuation_rule): neither a fresh nor a stale
    heartbeat is enough, only forced down."""
    w = world()
    w.power("node3", False)
    run(w, 6)
    assert w.hosts["node3"].fences[-1] == FenceEvent(6, "off", FenceResult.SUCCESS)
    with pytest.raises(Conflict, match="not forced down"):
        w.evacuate("vm1", "node3")  # heartbeat at 0 is not stale yet, not forced down
    run(w, 100)
    assert not w.is_up(w.hosts["node3"])  # stale now
    with pytest.raises(Conflict, match="not forced down"):
        w.evacuate("vm1", "node3")
    w.hosts["node3"].forced_down = True
    assert w.evacuate("vm1", "node3") in ("node1", "node2")
    assert w.violations == []


def test_a_fenced_frozen_host_loses_its_domains() -> None:
    w = world()
    w.freeze("node3", True)
    run(w, 6)
    assert not w.hosts["node3"].powered
    assert w.hosts["node3"].domains == {"vm1": "defined"}


def fenced_world(instances: list[Instance], groups: dict[str, str]) -> World:
    """node3 lost, fenced and forced down; node1 has the most room."""
    w = World([Host("node1", ram_mb=8192), Host("node2"), Host("node3")], instances, groups)
    w.step()
    w.power("node3", False)
    run(w, 6)
    w.hosts["node3"].forced_down = True
    return w


@pytest.mark.parametrize(("policy", "target"), [("affinity", "node2"),
                                                ("anti-affinity", "node1"), ("none", "node1")])
def test_server_groups_are_kept_by_the_products_rule(policy: str, target: str) -> None:
    """``scheduler.group_rule``, as the compute API applies it: an affinity member
    follows its group (not the roomiest host), an anti-affinity one avoids it.
    tests/integration/test_sim_contract.py holds this to the real API's answers."""
    w = fenced_world([Instance(id="vm1", name="vm1", host="node3", group="g"),
                      Instance(id="vm2", name="vm2", host="node2", group="g")],
                     {} if policy == "none" else {"g": policy})
    assert w.evacuate("vm1", "node3") == target
    assert w.violations == []


def test_an_instance_in_a_task_is_not_evacuated_with_the_products_message() -> None:
    w = fenced_world([Instance(id="vm1", name="vm1", host="node3",
                               task_state=states.POWERING_OFF)], {})
    with pytest.raises(Conflict) as refused:
        w.evacuate("vm1", "node3")
    assert str(refused.value) == not_evacuable("vm1", states.ACTIVE, states.POWERING_OFF)
    assert w.instances["vm1"].host == "node3"

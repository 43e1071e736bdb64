"""The evacuation controller's rules, one test each, against the simulated cloud.

Failures are injected through the simulated resources (power, network, fence
device, API), never by mocking the controller's calls; where a rule needs an
exact situation (an old fence, a heartbeat after a fence) the test sets the
world's state directly, as the world would have it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from ha.evacuator.controller import REASON_PREFIX, Controller, Policy, UnknownState
from ha.evacuator.env import (
    EvacuateError,
    EventRecord,
    EventState,
    FenceEvent,
    FenceResult,
    InstanceRecord,
    InstanceState,
    NodeState,
)
from ha.evacuator.sim import ControllerCrash, Host, Instance, SimEnv, Timing, World


class Rig:
    """A world, its env and a controller, stepped as the scenario runner does."""

    def __init__(self, hosts: int | list[Host] = 3,
                 instances: dict[str, dict[str, Any]] | None = None,
                 policy: Policy | None = None, timing: Timing | None = None,
                 groups: dict[str, str] | None = None) -> None:
        host_list = hosts if isinstance(hosts, list) else [
            Host(f"node{i}") for i in range(1, hosts + 1)]
        specs = instances if instances is not None else {"vm1": {"host": "node3"}}
        self.world = World(host_list, [Instance(id=n, name=n, **s) for n, s in specs.items()],
                           groups, timing)
        self.env = SimEnv(self.world)
        self.policy = policy or Policy()
        self.ctl = Controller(self.env, self.policy)
        self._iterate()

    def _iterate(self) -> None:
        self.world.step()
        self.ctl.do_one_iteration()

    def tick(self, seconds: int = 1) -> None:
        for _ in range(seconds):
            self.world.t += 1
            self._iterate()

    def until(self, t: int) -> None:
        self.tick(t - self.world.t)

    def failover(self) -> None:
        self.ctl = Controller(self.env, self.policy)

    # ---- reading ---------------------------------------------------------------------
    def event(self, host: str) -> EventRecord:
        ev = self.env.last_event(host)
        assert ev is not None, f"no event for {host}"
        return ev

    def record(self, host: str, instance: str) -> InstanceRecord:
        return next(r for r in self.env.instance_records(self.event(host).id)
                    if r.instance_id == instance)

    def evacuated(self) -> list[tuple[str, str, str]]:
        return [(i, s, t) for _, i, s, t in self.world.evacuations]

    def alerts(self) -> list[str]:
        return [line for line in self.world.lines if " ALERT " in line]

    def ok(self) -> None:
        assert self.world.violations == []


# ---- when a host is evacuated ---------------------------------------------------------
def test_a_host_is_evacuated_only_after_its_fence_succeeds() -> None:
    rig = Rig()
    rig.world.fence_device("node3", "slow", 10)
    rig.tick(4)
    rig.world.power("node3", False)
    rig.until(15)  # lost at 8, fence completes at 18
    assert rig.world.hosts["node3"].membership is NodeState.UNCLEAN
    assert rig.event("node3").state is EventState.DETECTED
    assert rig.evacuated() == []
    rig.until(18)
    assert rig.event("node3").state is EventState.EVACUATING
    assert rig.evacuated() == [("vm1", "node3", "node1")]
    rig.ok()


@pytest.mark.parametrize("fault", ["partition", "freeze"])
def test_an_unreachable_host_that_is_not_fenced_is_never_evacuated(fault: str) -> None:
    rig = Rig()
    rig.world.fence_device("node3", "fail")
    if fault == "partition":
        rig.world.set_network("node3", False)
    else:
        rig.world.freeze("node3", True)
    rig.until(200)
    assert rig.evacuated() == []
    assert rig.event("node3").state is EventState.DETECTED
    assert rig.world.hosts["node3"].domains == {"vm1": "running"}  # still runs there
    rig.ok()


def test_a_fence_older_than_the_last_sign_of_life_does_not_count() -> None:
    """Pacemaker's history keeps old fences: one from before the host was last
    seen alive says nothing about the current outage."""
    rig = Rig()
    node3 = rig.world.hosts["node3"]
    node3.agent_up = False  # its last heartbeat was at 0
    rig.world.fence_device("node3", "fail")
    rig.until(3)
    node3.fences.append(FenceEvent(2.0, "reboot", FenceResult.SUCCESS))  # then seen online
    rig.world.set_network("node3", False)  # unreachable from 4, lost at 7
    rig.until(40)
    assert rig.event("node3").alive_at == 6  # seen online by the controller until 6
    assert rig.event("node3").state is EventState.DETECTED
    assert rig.evacuated() == []


def test_an_on_action_is_not_a_fence_that_killed_the_host() -> None:
    rig = Rig()
    rig.world.fence_device("node3", "fail")
    rig.world.set_network("node3", False)
    rig.until(6)
    rig.world.hosts["node3"].fences.append(FenceEvent(6.0, "on", FenceResult.SUCCESS))
    rig.until(20)
    assert rig.evacuated() == []


def test_a_heartbeat_after_a_successful_fence_blocks_evacuation_and_alerts_once() -> None:
    """A fence that reports success but did not stop the host (wrong device)."""
    rig = Rig()
    rig.world.fence_device("node3", "fail")
    rig.world.set_network("node3", False)
    rig.until(5)
    host = rig.world.hosts["node3"]
    host.fences.append(FenceEvent(5.0, "off", FenceResult.SUCCESS))
    host.last_heartbeat = 6
    rig.until(30)
    assert rig.evacuated() == []
    assert len([a for a in rig.alerts() if "did not stop it" in a]) == 1


def test_a_failed_fence_alerts_once_per_event_and_blocks_evacuation() -> None:
    rig = Rig()
    rig.world.fence_device("node3", "fail")
    rig.world.power("node3", False)
    rig.until(100)  # several failed attempts
    assert len([f for f in rig.world.hosts["node3"].fences
                if f.result is FenceResult.FAILED]) > 3
    assert [a for a in rig.alerts() if "fencing failed" in a] == [rig.alerts()[0]]
    assert len(rig.alerts()) == 1
    assert rig.evacuated() == []


def test_a_host_lost_without_any_fence_is_alerted_after_a_while() -> None:
    rig = Rig(policy=Policy(unfenced_alert_after=30))
    rig.world.fence_device("node3", "slow", 1000)
    rig.world.power("node3", False)
    rig.until(32)
    assert rig.alerts() == []
    rig.until(40)
    assert len(rig.alerts()) == 1 and "not fenced" in rig.alerts()[0]


# ---- the failed host's service ------------------------------------------------------------
class RecordingEnv(SimEnv):
    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.calls: list[str] = []
        self.batches: list[list[str]] = []

    def disable(self, host: str, reason: str) -> None:
        self.calls.append(f"disable {host}")
        super().disable(host, reason)

    def set_forced_down(self, host: str, forced: bool) -> None:
        self.calls.append(f"forced_down {host} {forced}")
        super().set_forced_down(host, forced)

    def evacuate_many(self, calls: Sequence[tuple[str, str]]
                      ) -> list[str | EvacuateError]:
        self.calls.extend(f"evacuate {instance_id}" for instance_id, _ in calls)
        self.batches.append([instance_id for instance_id, _ in calls])
        return super().evacuate_many(calls)


def test_the_service_is_disabled_at_detection_and_forced_down_before_any_evacuation() -> None:
    rig = Rig(instances={"vm1": {"host": "node3"}, "vm2": {"host": "node3"}})
    rig.env = env = RecordingEnv(rig.world)
    rig.failover()
    rig.world.power("node3", False)
    rig.until(4)  # unreachable from 1, lost at 4
    assert env.calls == ["disable node3"]
    assert (rig.world.hosts["node3"].disabled_reason or "").startswith(REASON_PREFIX)
    assert not rig.world.hosts["node3"].forced_down
    rig.until(6)  # fenced
    assert env.calls == ["disable node3", "forced_down node3 True", "evacuate vm1",
                         "evacuate vm2"]



def test_calls_are_batched_by_priority_level_highest_first() -> None:
    """The calls of one level may run at once (the real env's do); a lower level is
    only called after the higher one has its hosts, so short capacity goes upward."""
    rig = Rig(instances={
        "low": {"host": "node3"},
        "high-a": {"host": "node3", "metadata": {"ha:priority": "5"}},
        "high-b": {"host": "node3", "metadata": {"ha:priority": "5"}},
        "mid": {"host": "node3", "metadata": {"ha:priority": "1"}}})
    rig.env = env = RecordingEnv(rig.world)
    rig.failover()
    rig.world.power("node3", False)
    rig.until(8)
    assert env.batches == [["high-a", "high-b"], ["mid"], ["low"]]
    assert all(rig.record("node3", vm).state is InstanceState.REBUILDING
               or rig.record("node3", vm).state is InstanceState.DONE
               for vm in ("low", "high-a", "high-b", "mid"))
    rig.ok()

def test_a_host_disabled_by_an_operator_stays_disabled_when_it_returns() -> None:
    rig = Rig(timing=Timing(boot_time=5))
    rig.world.hosts["node3"].enabled = False
    rig.world.hosts["node3"].disabled_reason = "maintenance"
    rig.world.power("node3", False)
    rig.until(10)
    rig.world.power("node3", True)
    rig.until(40)
    host = rig.world.hosts["node3"]
    assert (host.enabled, host.disabled_reason, host.forced_down) == (False, "maintenance", False)


# ---- per instance ---------------------------------------------------------------------------
def test_instances_are_planned_by_metadata_and_state() -> None:
    rig = Rig(instances={
        "optout": {"host": "node3", "metadata": {"ha:enabled": "False"}},
        "building": {"host": "node3", "vm_state": "building", "task_state": "spawning"},
        "deleting": {"host": "node3", "task_state": "deleting"},
        "rebooting": {"host": "node3", "task_state": "rebooting"},
        "errored": {"host": "node3", "vm_state": "error"},
        "stopped": {"host": "node3", "vm_state": "stopped"},
        "plain": {"host": "node3", "metadata": {"ha:priority": "x"}},
    })
    rig.world.power("node3", False)
    rig.until(20)
    states = {r.instance_id: r.state.value for r in rig.env.instance_records(1)}
    assert states == {"optout": "skipped", "building": "skipped", "deleting": "skipped",
                      "rebooting": "failed", "errored": "done", "stopped": "done",
                      "plain": "done"}
    assert rig.world.instances["stopped"].vm_state == "stopped"
    assert rig.world.instances["errored"].vm_state == "active"
    assert rig.world.instances["optout"].host == "node3"


def test_an_unknown_vm_state_raises() -> None:
    rig = Rig(instances={"odd": {"host": "node3", "vm_state": "shelved"}})
    rig.world.power("node3", False)
    with pytest.raises(UnknownState):
        rig.until(20)


def test_higher_priority_is_evacuated_first_across_events_and_the_rest_fail() -> None:
    hosts = [Host("node1", ram_mb=1024), Host("node2", ram_mb=4096), Host("node3", ram_mb=4096),
             Host("node4", ram_mb=4096), Host("node5", ram_mb=4096)]
    rig = Rig(hosts, instances={
        "n2low": {"host": "node2", "ram_mb": 1024, "metadata": {"ha:priority": "1"}},
        "n2top": {"host": "node2", "ram_mb": 1024, "metadata": {"ha:priority": "9"}},
        "n3mid": {"host": "node3", "ram_mb": 1024, "metadata": {"ha:priority": "5"}},
        "fill4": {"host": "node4", "ram_mb": 4096},
        "fill5": {"host": "node5", "ram_mb": 4096},
    })
    rig.world.power("node2", False)
    rig.world.power("node3", False)
    rig.until(20)
    assert [i for i, _, _ in rig.evacuated()] == ["n2top"]  # one slot of 1024 MB
    failed = rig.record("node3", "n3mid")
    assert failed.state is InstanceState.FAILED and "RAM" in (failed.error or "")
    assert failed.attempts == 1  # NoValidHost is not retried
    assert rig.record("node2", "n2low").state is InstanceState.FAILED


def test_no_more_than_max_concurrent_rebuilds_at_once() -> None:
    hosts = [Host(f"node{i}", vcpus=16, ram_mb=16384) for i in range(1, 4)]
    rig = Rig(hosts, {f"vm{i}": {"host": "node3"} for i in range(7)},
              policy=Policy(max_concurrent_rebuilds=3))
    rig.world.power("node3", False)
    peak = 0
    for _ in range(40):
        rig.tick()
        rebuilding = [r for r in rig.env.instance_records(1)
                      if r.state is InstanceState.REBUILDING]
        peak = max(peak, len(rebuilding))
    assert peak == 3
    # every one of the seven moved in the end, not only those that got a slot
    assert {r.instance_id: r.state for r in rig.env.instance_records(1)} == {
        f"vm{i}": InstanceState.DONE for i in range(7)}


# ---- the storm governor ------------------------------------------------------------------
def test_more_than_the_failed_share_holds_every_event_and_alerts_once() -> None:
    rig = Rig(5, {"vm2": {"host": "node2"}, "vm3": {"host": "node3"},
                  "vm4": {"host": "node4"}}, timing=Timing(boot_time=5))
    for node in ("node2", "node3", "node4"):
        rig.world.power(node, False)
    rig.until(30)
    assert {rig.event(n).state for n in ("node2", "node3", "node4")} == {EventState.HELD}
    assert rig.evacuated() == []
    assert len(rig.alerts()) == 1 and "storm" in rig.alerts()[0]
    rig.world.power("node4", True)
    rig.until(45)
    assert sorted(i for i, _, _ in rig.evacuated()) == ["vm2", "vm3"]
    assert rig.event("node4").state is EventState.ABORTED


def test_at_the_failed_share_exactly_evacuation_goes_on() -> None:
    rig = Rig(4, {"vm3": {"host": "node3"}, "vm4": {"host": "node4"}},
              policy=Policy(max_failed_share=0.5))
    rig.world.power("node3", False)
    rig.world.power("node4", False)
    rig.until(20)
    assert sorted(i for i, _, _ in rig.evacuated()) == ["vm3", "vm4"]


# ---- retries ---------------------------------------------------------------------------
def test_transient_failures_are_retried_with_exponential_backoff_up_to_max_attempts() -> None:
    rig = Rig(policy=Policy(retry_base=2, retry_max=3, max_attempts=3))
    rig.world.failing_evacuates = 100
    rig.world.power("node3", False)
    rig.until(6)  # fenced at 6: attempt 1 fails
    assert rig.record("node3", "vm1").next_try_at == 8
    rig.until(8)  # attempt 2 fails; backoff 4, capped at 3
    assert rig.record("node3", "vm1").next_try_at == 11
    rig.until(11)  # attempt 3 fails: given up
    record = rig.record("node3", "vm1")
    assert (record.state, record.attempts) == (InstanceState.FAILED, 3)
    assert rig.world.failing_evacuates == 97
    assert Policy(retry_base=5, retry_max=60).backoff(5) == 60


def test_a_target_that_dies_mid_rebuild_is_itself_fenced_then_the_instance_moves_on() -> None:
    rig = Rig(5, {"vm1": {"host": "node3", "rebuild_time": 30}})
    rig.world.power("node3", False)
    rig.until(6)
    assert rig.evacuated() == [("vm1", "node3", "node1")]
    rig.world.power("node1", False)
    rig.until(11)  # node1 lost at 10, not fenced yet
    assert rig.record("node3", "vm1").state is InstanceState.REBUILDING
    rig.until(12)  # node1 fenced by its own event: vm1 goes on from there
    assert rig.evacuated()[1] == ("vm1", "node1", "node2")
    assert rig.record("node3", "vm1").attempts == 2
    own = rig.env.instance_records(rig.event("node1").id)
    assert [(r.instance_id, r.state) for r in own] == [("vm1", InstanceState.SKIPPED)]
    rig.until(45)
    assert rig.record("node3", "vm1").state is InstanceState.DONE
    rig.ok()


def test_a_rebuild_that_does_not_finish_on_a_live_target_times_out() -> None:
    rig = Rig(instances={"vm1": {"host": "node3", "rebuild_time": 1000}},
              policy=Policy(rebuild_timeout=20))
    rig.world.power("node3", False)
    rig.until(25)
    assert rig.record("node3", "vm1").state is InstanceState.REBUILDING
    rig.until(27)
    record = rig.record("node3", "vm1")
    assert record.state is InstanceState.FAILED and "not finished" in (record.error or "")


def test_a_failed_rebuild_is_reported_failed() -> None:
    rig = Rig()
    rig.world.instances["vm1"].disk_missing = True
    rig.world.power("node3", False)
    rig.until(20)
    assert rig.record("node3", "vm1").state is InstanceState.FAILED
    assert rig.event("node3").state is EventState.FAILED
    assert rig.event("node3").all_active_at is None


# ---- completion and timings ---------------------------------------------------------------
def test_the_event_records_its_phase_timings() -> None:
    rig = Rig(instances={"vm1": {"host": "node3"}, "vm2": {"host": "node3"}},
              policy=Policy(max_concurrent_rebuilds=1))
    rig.world.power("node3", False)
    rig.until(30)
    ev = rig.event("node3")
    assert ev.state is EventState.DONE
    assert (ev.detected_at, ev.fenced_at, ev.fence_confirmed_at, ev.first_rebuild_at,
            ev.last_rebuild_at, ev.all_active_at) == (4, 6, 6, 6, 11, 16)


# ---- failover -------------------------------------------------------------------------------
def test_a_new_controller_every_iteration_evacuates_each_instance_once() -> None:
    """The extreme failover: no controller survives more than one iteration."""
    hosts = [Host(f"node{i}", vcpus=16, ram_mb=16384) for i in range(1, 5)]
    rig = Rig(hosts, {f"vm{i}": {"host": "node3"} for i in range(6)},
              policy=Policy(max_concurrent_rebuilds=2))
    rig.world.power("node3", False)
    for _ in range(40):
        rig.failover()
        rig.tick()
    assert sorted(i for i, _, _ in rig.evacuated()) == [f"vm{i}" for i in range(6)]
    assert rig.event("node3").state is EventState.DONE
    rig.ok()


def test_two_controllers_interleaved_never_evacuate_twice() -> None:
    """Pacemaker runs one; if two ever ran, the compare-and-swaps keep them apart."""
    rig = Rig(instances={f"vm{i}": {"host": "node3"} for i in range(4)})
    other = Controller(rig.env, rig.policy)
    rig.world.power("node3", False)
    for _ in range(30):
        rig.tick()
        other.do_one_iteration()
    assert len(rig.evacuated()) == 4
    assert [e.host for e in rig.env.all_events()] == ["node3"]
    rig.ok()


def test_a_call_interrupted_before_it_happened_is_made_again() -> None:
    """The record says rebuilding with no target and the instance is still on its
    source: the old controller died before its call reached the API."""
    rig = Rig(instances={"vm1": {"host": "node3"}}, policy=Policy(max_concurrent_rebuilds=0))
    rig.world.power("node3", False)
    rig.until(6)
    record = rig.record("node3", "vm1")
    assert rig.env.update_instance(1, "vm1", InstanceState.PENDING, InstanceState.REBUILDING,
                                   attempts=1, started_at=6.0)
    rig.ctl = Controller(rig.env, Policy())
    rig.until(8)
    assert rig.evacuated() == [("vm1", "node3", "node1")]
    assert record.attempts == 0
    assert rig.record("node3", "vm1").attempts == 2  # the lost call cost one attempt


def test_an_interrupted_call_that_happened_is_adopted() -> None:
    rig = Rig()
    rig.world.crash_after_evacuate = True
    rig.world.power("node3", False)
    with pytest.raises(ControllerCrash):
        rig.until(6)
    assert rig.record("node3", "vm1").target is None
    rig.failover()
    rig.until(12)
    assert rig.evacuated() == [("vm1", "node3", "node1")]
    assert rig.record("node3", "vm1").state is InstanceState.DONE


def test_a_finished_outage_is_not_opened_again_by_a_new_controller() -> None:
    rig = Rig()
    rig.world.power("node3", False)
    rig.until(20)
    rig.failover()
    rig.until(40)
    assert [e.id for e in rig.env.all_events()] == [1]


# ---- returning hosts ------------------------------------------------------------------------
def test_a_returned_host_is_enabled_only_once_clean() -> None:
    rig = Rig(timing=Timing(boot_time=10, sweep_delay=5))
    rig.world.power("node3", False)
    rig.until(20)
    rig.world.power("node3", True)
    rig.until(30)  # booted and heartbeating, not swept yet
    host = rig.world.hosts["node3"]
    assert host.membership is NodeState.ONLINE and not rig.env.host_clean("node3")
    assert (host.enabled, host.forced_down) == (False, True)
    rig.until(35)
    assert (host.enabled, host.forced_down) == (True, False)
    assert host.domains == {}  # the stale vm1 was destroyed, never started
    assert rig.event("node3").reenabled_at == 35


def test_a_host_back_before_its_instances_moved_keeps_them_and_alerts() -> None:
    rig = Rig(instances={f"vm{i}": {"host": "node3", "rebuild_time": 20} for i in range(3)},
              policy=Policy(max_concurrent_rebuilds=1),
              timing=Timing(boot_time=3, sweep_delay=1))
    rig.world.power("node3", False)
    rig.until(7)  # fenced at 6; vm0 rebuilding, vm1 and vm2 wait for the slot
    rig.world.power("node3", True)
    rig.until(40)
    states = {r.instance_id: r.state for r in rig.env.instance_records(1)}
    assert states == {"vm0": InstanceState.DONE, "vm1": InstanceState.SKIPPED,
                      "vm2": InstanceState.SKIPPED}
    assert len([a for a in rig.alerts() if "came back" in a]) == 1
    assert rig.world.hosts["node3"].enabled
    rig.ok()


def test_not_enabled_while_its_event_is_in_progress() -> None:
    rig = Rig(instances={"vm1": {"host": "node3", "rebuild_time": 100}},
              timing=Timing(boot_time=3, sweep_delay=1))
    rig.world.power("node3", False)
    rig.until(6)
    rig.world.power("node3", True)
    rig.until(30)
    assert rig.event("node3").state is EventState.EVACUATING
    assert not rig.world.hosts["node3"].enabled


# ---- unknown states ---------------------------------------------------------------------------
def test_an_unknown_event_state_raises() -> None:
    rig = Rig()
    rig.world.power("node3", False)
    rig.until(4)
    rig.env._events[1] = replace(rig.env.event(1), state="limbo")  # type: ignore[arg-type]
    with pytest.raises(UnknownState):
        rig.tick()


def test_an_unknown_instance_record_state_raises() -> None:
    rig = Rig(instances={"vm1": {"host": "node3", "rebuild_time": 100}})
    rig.world.power("node3", False)
    rig.until(6)
    key = (1, "vm1")
    rig.env._instances[key] = replace(rig.env._instances[key], state="limbo")  # type: ignore[arg-type]
    with pytest.raises(UnknownState):
        rig.tick()

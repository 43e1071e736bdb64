"""The evacuation simulator against the real compute API: the same decisions, the same
answers.

``ha/evacuator/sim.py`` stands in for the compute API in every scenario the
evacuation controller is tested with; if the two drifted, the scenarios would prove
the controller against a cloud that does not exist. Each case below sets up one
fleet twice, as compute service rows and booted servers on the real compute API
(SQLite) and as a simulated :class:`~ha.evacuator.sim.World`, takes the controller's
steps on both (disable the source, force it down unless the case says not) and asks
both to evacuate the same servers through the controller's call
(``POST /os-hosts/<host>/evacuate``; ``SimEnv.evacuate_many``). Then per server:

* evacuated or not, and where to: the very host (a reserved one first, anti-affinity
  and affinity kept, the spreading weight's choice), or
* which error: its kind as the controller reads it (``ha.evacuator.real.call_error``
  over the real refusal code and status; the simulator's exception class) and its message (the
  filter statistics of a "no valid host" included);
* and every instance's host, vm_state and task_state afterwards.

The table's ``expect`` also pins what both must answer, so the two cannot agree on
something wrong without this test saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from core.common.timeutil import now
from core.compute import states
from core.compute.evacuation_rule import not_evacuable, refusal
from core.compute.models import ComputeService, Instance
from ha.evacuator.env import EvacuateError, FenceEvent, FenceResult, NodeState
from ha.evacuator.real import call_error
from ha.evacuator.sim import Host, SimEnv, Timing, World
from ha.evacuator.sim import Instance as SimInstance
from tests.integration.computeapi import Compute

TINY_MB = 256  # m1.tiny, the flavor every server here is booted with (1 vCPU, 1 GB disk)


@dataclass(frozen=True)
class HostSpec:
    name: str
    slots: int = 4  # m1.tiny servers it has room for (RAM is the binding resource)
    reserved: bool = False
    enabled: bool = True
    stale: bool = False  # its heartbeat is older than the service down time


@dataclass(frozen=True)
class VmSpec:
    name: str
    host: str
    group: str | None = None
    vm_state: str = states.ACTIVE
    task_state: str | None = None
    deleted: bool = False  # deleted (its agent finished the delete) before the evacuation


@dataclass(frozen=True)
class Case:
    id: str
    hosts: tuple[HostSpec, ...]
    vms: tuple[VmSpec, ...]
    evacuate: tuple[str, ...]  # server names, evacuated from ``source`` in one call
    # per server: the host it goes to, "no_valid_host", "refused" (source not forced
    # down), "not_evacuable" (its state) or "gone" (deleted)
    expect: tuple[str, ...]
    groups: Mapping[str, str] = field(default_factory=dict)  # name: policy
    source: str = "h1"
    forced_down: bool = True


H1 = HostSpec("h1")
CASES = [
    Case("source-up-is-refused", (H1, HostSpec("h2")), (VmSpec("a", "h1"),),
         ("a",), ("refused",), forced_down=False),
    Case("source-stale-heartbeat-is-refused",
         (HostSpec("h1", stale=True), HostSpec("h2")), (VmSpec("a", "h1"),),
         ("a",), ("refused",), forced_down=False),
    Case("forced-down-is-evacuated", (H1, HostSpec("h2")), (VmSpec("a", "h1"),),
         ("a",), ("h2",)),
    Case("target-full", (H1, HostSpec("h2", slots=1)),
         (VmSpec("a", "h1"), VmSpec("b", "h2")), ("a",), ("no_valid_host",)),
    Case("anti-affinity-member-on-the-only-other-host",
         (H1, HostSpec("h2", slots=8)),
         (VmSpec("a", "h1", "g"), VmSpec("b", "h2", "g")), ("a",), ("no_valid_host",),
         groups={"g": "anti-affinity"}),
    Case("anti-affinity-kept-over-the-roomiest-host",
         (H1, HostSpec("h2", slots=8), HostSpec("h3", slots=2)),
         (VmSpec("a", "h1", "g"), VmSpec("b", "h2", "g")), ("a",), ("h3",),
         groups={"g": "anti-affinity"}),
    Case("affinity-kept-when-its-members-are-on-the-dead-host",
         (H1, HostSpec("h2", slots=8)),
         (VmSpec("a", "h1", "g"), VmSpec("b", "h1", "g")), ("a", "b"),
         ("no_valid_host", "no_valid_host"), groups={"g": "affinity"}),
    Case("reserved-host-first",
         (H1, HostSpec("h2", slots=8), HostSpec("r3", slots=2, reserved=True)),
         (VmSpec("a", "h1"),), ("a",), ("r3",)),
    Case("full-reserved-host-then-a-normal-one",
         (H1, HostSpec("h2", slots=8), HostSpec("r3", slots=1, reserved=True)),
         (VmSpec("a", "h1"), VmSpec("b", "h1")), ("a", "b"), ("r3", "h2")),
    Case("the-roomiest-host-first-and-room-runs-out",
         (H1, HostSpec("h2", slots=1), HostSpec("h3", slots=2)),
         tuple(VmSpec(n, "h1") for n in "abcd"), ("a", "b", "c", "d"),
         ("h3", "h2", "h3", "no_valid_host")),
    Case("disabled-and-down-hosts-are-skipped",
         (H1, HostSpec("h2", slots=8, enabled=False), HostSpec("h3", slots=8, stale=True),
          HostSpec("h4", slots=1)),
         (VmSpec("a", "h1"), VmSpec("b", "h1")), ("a", "b"), ("h4", "no_valid_host")),
    Case("states-evacuable-or-not",
         (HostSpec("h1", slots=8), HostSpec("h2", slots=8)),
         (VmSpec("building", "h1", vm_state=states.BUILDING, task_state=states.SPAWNING),
          VmSpec("stopping", "h1", task_state=states.POWERING_OFF),
          VmSpec("deleting", "h1", task_state=states.DELETING),
          VmSpec("error", "h1", vm_state=states.ERROR),
          VmSpec("stopped", "h1", vm_state=states.STOPPED),
          VmSpec("rebuilding", "h1", task_state=states.REBUILDING)),
         ("building", "stopping", "deleting", "error", "stopped", "rebuilding"),
         ("not_evacuable", "not_evacuable", "not_evacuable", "h2", "h2", "h2")),
    Case("deleted-meanwhile", (H1, HostSpec("h2")),
         (VmSpec("a", "h1", deleted=True), VmSpec("b", "h1")), ("a", "b"), ("gone", "h2")),
]

# What an answer is, for comparing: a host, or (error kind, message).
Answer = str | tuple[str, str]


def answer(result: str | EvacuateError) -> Answer:
    return result if isinstance(result, str) else (type(result).__name__, str(result))


@dataclass
class RealCloud:
    """The case on the real compute API."""

    compute: Compute
    ids: dict[str, str]  # server name -> id

    def placements(self) -> dict[str, tuple[str | None, str, str | None]]:
        servers = self.compute.call("GET", "/servers/detail").json()["servers"]
        return {s["id"]: (s["OS-EXT-SRV-ATTR:host"], s["OS-EXT-STS:vm_state"],
                          s["OS-EXT-STS:task_state"]) for s in servers}


def services_db(compute: Compute, **where_values: Any) -> None:
    """Update compute service rows directly (what an agent or time would change)."""
    hosts = where_values.pop("hosts")
    compute.services.db.run_in_transaction(lambda s: s.execute(
        update(ComputeService).where(ComputeService.host.in_(hosts)).values(**where_values)))


def build_real(compute: Compute, case: Case) -> RealCloud:
    for h in case.hosts:
        compute.add_host(h.name, slots=h.slots)
    names = [h.name for h in case.hosts]
    groups = {name: compute.call("POST", "/os-server-groups", json={"server_group": {
        "name": name, "policies": [policy]}}).json()["server_group"]["id"]
        for name, policy in case.groups.items()}
    ids: dict[str, str] = {}
    for vm in case.vms:
        # steer the boot: only the host it belongs on is enabled
        services_db(compute, hosts=names, enabled=False)
        services_db(compute, hosts=[vm.host], enabled=True)
        extra = {"os:scheduler_hints": {"group": groups[vm.group]}} if vm.group else {}
        booted = compute.call("POST", "/servers", json={"server": {
            "name": vm.name, "imageRef": compute.image, "flavorRef": "1",
            "networks": "none"}, **extra})
        assert booted.status_code == 202, booted.text
        ids[vm.name] = booted.json()["server"]["id"]
    real = RealCloud(compute, ids)
    assert [real.placements()[ids[vm.name]][0] for vm in case.vms] == [vm.host for vm in case.vms]
    for h in case.hosts:
        services_db(compute, hosts=[h.name], enabled=h.enabled, reserved=h.reserved,
                    last_seen=now() - 10 * compute.services.cfg.compute.service_down_time
                    if h.stale else now())
    for vm in case.vms:
        compute.services.db.run_in_transaction(lambda s, vm=vm: s.execute(
            update(Instance).where(Instance.id == ids[vm.name]).values(
                vm_state=states.DELETED if vm.deleted else vm.vm_state,
                task_state=None if vm.deleted else vm.task_state, deleted=vm.deleted)))
    return real


def controller_steps_real(compute: Compute, case: Case) -> None:
    """What the controller does before it evacuates (``RealEnv.disable`` /
    ``set_forced_down``): the same os-services calls."""
    body = {"host": case.source, "binary": "nova-compute"}
    assert compute.call("PUT", "/os-services/disable-log-reason", json={
        **body, "disabled_reason": "contract"}).status_code == 200
    if case.forced_down:
        forced = compute.call("PUT", "/os-services/force-down",
                              json={**body, "forced_down": True},
                              headers={"OpenStack-API-Version": "compute 2.11"})
        assert forced.status_code == 200, forced.text


def evacuate_real(real: RealCloud, case: Case) -> tuple[list[Answer], list[int | None]]:
    """The controller's call, each answer as ``RealEnv`` reads it (``call_error``);
    and the HTTP status of each error (None for a server moved)."""
    ids = [real.ids[n] for n in case.evacuate]
    resp = real.compute.call("POST", f"/os-hosts/{case.source}/evacuate",
                             json={"evacuate": {"servers": ids}})
    if resp.status_code != 200:  # the whole request refused: every server's answer
        body = next(iter(resp.json().values()))
        return ([answer(call_error(resp.status_code, body["message"], body.get("type")))]
                * len(ids),
                [resp.status_code] * len(ids))
    items = resp.json()["evacuations"]
    assert [x["server_id"] for x in items] == ids
    return ([x["host"] if "host" in x else
             answer(call_error(x["error"]["code"], x["error"]["message"], x["error"].get("type")))
             for x in items],
            [x["error"]["code"] if "error" in x else None for x in items])


def build_sim(case: Case, real: RealCloud, service_down_time: int) -> World:
    """The same fleet as a simulated world, with the real servers' ids (and as names,
    so messages match). The source is off and fenced, as the controller makes sure
    before it forces a host down."""
    hosts = []
    for h in case.hosts:
        host = Host(h.name, vcpus=64, ram_mb=TINY_MB * h.slots, disk_gb=1000,
                    reserved=h.reserved, cpu_ratio=4.0, ram_ratio=1.0, enabled=h.enabled)
        if h.stale:
            host.last_heartbeat = -10 * service_down_time
        if h.name == case.source:
            host.powered = host.booted = host.agent_up = False
            host.membership = NodeState.OFFLINE
            host.fences = [FenceEvent(0, "off", FenceResult.SUCCESS)]
        hosts.append(host)
    group_ids = {name: f"group-{name}" for name in case.groups}
    vms = [SimInstance(id=real.ids[vm.name], name=real.ids[vm.name], host=vm.host,
                       vm_state=vm.vm_state, task_state=vm.task_state, vcpus=1,
                       ram_mb=TINY_MB, disk_gb=1,
                       group=group_ids[vm.group] if vm.group else None) for vm in case.vms]
    world = World(hosts, vms, {group_ids[n]: p for n, p in case.groups.items()},
                  Timing(service_down_time=service_down_time))
    for vm in case.vms:
        if vm.deleted:
            world.delete(real.ids[vm.name])
    return world


def evacuate_sim(world: World, case: Case, ids: Mapping[str, str]) -> list[Answer]:
    env = SimEnv(world)
    env.disable(case.source, "contract")
    if case.forced_down:
        env.set_forced_down(case.source, True)
    return [answer(r) for r in env.evacuate_many([(ids[n], case.source)
                                                  for n in case.evacuate])]


STATUS = {"refused": 409, "not_evacuable": 409, "no_valid_host": 409, "gone": 404}


def check_expected(case: Case, got: list[Answer], statuses: list[int | None],
                   ids: Mapping[str, str]) -> None:
    """The table's expectation, as far as it pins the answer (a no valid host's filter
    statistics are the two sides' to agree on, not the table's)."""
    assert statuses == [STATUS.get(want) for want in case.expect]
    vms = {vm.name: vm for vm in case.vms}
    for name, want, answer_ in zip(case.evacuate, case.expect, got, strict=True):
        vm = vms[name]
        if want == "refused":
            assert answer_ == ("Conflict", refusal(case.source)), name
        elif want == "not_evacuable":
            assert answer_ == ("Conflict", not_evacuable(ids[name], vm.vm_state,
                                                         vm.task_state)), name
        elif want == "gone":
            assert answer_ == ("Conflict", f"Instance {ids[name]} could not be found."), name
        elif want == "no_valid_host":
            assert isinstance(answer_, tuple) and answer_[0] == "NoValidHost", (name, answer_)
        else:
            assert answer_ == want, name


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only (the all-in-one's database): the decisions compared here do not
    depend on the backend; tests/integration/test_scheduling_race.py races the same
    placement on MariaDB."""
    return f"sqlite:///{tmp_path / 'haven.db'}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_simulator_decides_as_the_compute_api(compute: Compute, case: Case) -> None:
    real = build_real(compute, case)
    world = build_sim(case, real, compute.services.cfg.compute.service_down_time)
    controller_steps_real(compute, case)

    got_real, statuses = evacuate_real(real, case)
    got_sim = evacuate_sim(world, case, real.ids)

    assert got_sim == got_real, "the simulator and the compute API answer differently"
    check_expected(case, got_real, statuses, real.ids)
    # and the world afterwards: where every instance is, in which state
    after_real = real.placements()
    after_sim = {i.id: (i.host, i.vm_state, i.task_state) for i in world.instances.values()
                 if i.vm_state != states.DELETED}
    assert after_sim == after_real
    assert world.violations == []

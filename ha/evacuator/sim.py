"""A simulated cloud with virtual time, for the evacuation controller.

The world is stepped one virtual second at a time. Failures are injected
through the simulated resources, as they happen in the lab: a node loses power,
its network, or freezes; its fence device works, fails or is slow; a rebuild
takes time and dies with its target. Pacemaker is modelled as far as the
controller can see it: a node unreachable for ``token_timeout`` is UNCLEAN and
fenced (and the fence retried every ``fence_retry`` while it fails); a fenced
node is OFFLINE and powered off; a node that is reachable again rejoins (a
pending fence is then dropped). Compute agents heartbeat while their node is
reachable, resume rebuilds assigned to them when they start, and after start
destroy the domains of instances that were evacuated away (Haven's tombstone
sweep) and mark their own not-running instances stopped, as the real agent does.

The compute API's evacuate is ``core/compute/evacuate.py``'s decision over the
world's state instead of the database's, and it decides with the product's own rules,
not copies of them: the source rule and the evacuable states, the state an instance is
rebuilt into and the placement request (``core.compute.evacuation_rule``), the states
themselves (``core.compute.states``), the server group rule, the filters and the host
choice (``core.compute.scheduler``: reserved hosts first, anti-affinity and affinity
kept, capacity filtered, spreading weight). ``tests/integration/test_sim_contract.py``
runs the same decisions against the real compute API and this world and compares them.

The world also knows the ground truth the controller cannot see, and checks the
safety invariants against it on every step: never two running copies of one
instance, never an evacuation from a host that was not fenced after it was last
reachable, never a placement onto a dead, disabled or forced-down host, never an
instance evacuated twice from one host.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from core.compute import scheduler
from core.compute.evacuation_rule import (
    evacuable,
    may_evacuate_from,
    not_evacuable,
    placement_request,
    refusal,
    state_after,
)
from core.compute.states import ACTIVE, DELETED, ERROR, REBUILDING, STOPPED
from ha.evacuator import fence_history
from ha.evacuator.env import (
    Conflict,
    EvacuateError,
    FenceEvent,
    FenceResult,
    InstanceStatus,
    InstanceView,
    NodeState,
    NoValidHost,
    ServiceView,
    TransientError,
)
from ha.evacuator.memory import MemoryRecords

RUNNING, DEFINED = "running", "defined"  # a domain on a host: running, or only defined


@dataclass(frozen=True)
class Timing:
    """Virtual seconds; the defaults are the lab's (token 3000 ms, 5 s heartbeats)."""

    token_timeout: int = 3
    fence_delay: int = 2  # a fence operation's duration (``fence NODE slow N`` sets it)
    fence_retry: int = 10  # Pacemaker's wait before trying a failed fence again
    boot_time: int = 30
    heartbeat_interval: int = 5
    service_down_time: int = 30
    sweep_delay: int = 3  # a started agent's first reconciliation (the tombstone sweep)
    rebuild_time: int = 5  # evacuate accepted -> domain running on the target


class ControllerCrash(Exception):
    """The controller process died (raised by the world in the middle of a call)."""


@dataclass
class Host:
    """A cluster node, and its hypervisor (compute service and libvirt domains)."""

    name: str
    vcpus: int = 4
    ram_mb: int = 4096
    disk_gb: int = 40
    reserved: bool = False
    cpu_ratio: float = 1.0
    ram_ratio: float = 1.0
    hypervisor: bool = True
    # the machine
    powered: bool = True
    booted: bool = True
    boot_done_at: int | None = None
    frozen: bool = False
    network: bool = True
    # Pacemaker's view and fencing
    membership: NodeState = NodeState.ONLINE
    unreachable_since: int | None = None
    last_reachable: int = 0
    fence_mode: str = "ok"  # ok | fail
    fence_delay: int | None = None  # None: the timing's default
    fence_due: int | None = None
    fences: list[FenceEvent] = field(default_factory=list)
    # the compute service
    enabled: bool = True
    disabled_reason: str | None = None
    forced_down: bool = False
    last_heartbeat: int = 0
    next_heartbeat: int = 0
    agent_up: bool = True
    sweep_due: int | None = None
    swept: bool = True
    domains: dict[str, str] = field(default_factory=dict)

    @property
    def reachable(self) -> bool:
        """Corosync, the database and the API can talk to it."""
        return self.powered and self.booted and not self.frozen and self.network


@dataclass
class Instance:
    id: str
    name: str
    host: str | None
    vm_state: str = ACTIVE
    task_state: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    vcpus: int = 1
    ram_mb: int = 512
    disk_gb: int = 1
    group: str | None = None
    rebuild_time: int | None = None
    disk_missing: bool = False
    fault: str | None = None


@dataclass
class Rebuild:
    instance: str
    host: str
    remaining: int
    expected: str  # vm_state at the end (stopped stays stopped)


class World:
    """The simulated cloud. ``step()`` advances it by one virtual second."""

    def __init__(self, hosts: list[Host], instances: list[Instance],
                 groups: Mapping[str, str] | None = None, timing: Timing | None = None) -> None:
        self.t = 0
        self.timing = timing or Timing()
        self.hosts = {h.name: h for h in sorted(hosts, key=lambda h: h.name)}
        self.instances = {i.id: i for i in sorted(instances, key=lambda i: i.id)}
        self.groups = dict(groups or {})
        self.rebuilds: dict[str, Rebuild] = {}
        self.lines: list[str] = []
        self.violations: list[str] = []
        self.evacuations: list[tuple[int, str, str, str]] = []  # (t, instance, source, target)
        self.failing_evacuates = 0  # the next N evacuate calls fail transiently
        self.crash_after_evacuate = False
        for inst in self.instances.values():
            if inst.host is None:
                continue
            if inst.host not in self.hosts:
                raise ValueError(f"instance {inst.name} is on unknown host {inst.host}")
            if inst.vm_state == ACTIVE:
                self.hosts[inst.host].domains[inst.id] = RUNNING
            elif inst.vm_state == STOPPED:
                self.hosts[inst.host].domains[inst.id] = DEFINED

    # ---- the log -----------------------------------------------------------------------
    def log(self, who: str, message: str) -> None:
        self.lines.append(f"{self.t:5d} {who:<7} {message}")

    def violation(self, message: str) -> None:
        self.violations.append(f"t={self.t}: {message}")
        self.log("VIOLATION", message)

    # ---- faults (the scenario commands) ------------------------------------------------
    def power(self, name: str, on: bool) -> None:
        host = self.hosts[name]
        if on and not host.powered:
            host.powered, host.booted = True, False
            host.boot_done_at = self.t + self.timing.boot_time
        elif not on and host.powered:
            self._power_off(host)

    def _power_off(self, host: Host) -> None:
        host.powered = host.booted = host.agent_up = False
        host.frozen = False
        host.boot_done_at = None
        # persistent domains survive as definitions; nothing runs any more
        host.domains = {i: DEFINED for i in host.domains}
        for inst_id, job in sorted(self.rebuilds.items()):
            if job.host == host.name:
                del self.rebuilds[inst_id]
                self.log(host.name, f"rebuild of {self.instances[inst_id].name} lost")

    def set_network(self, name: str, up: bool) -> None:
        self.hosts[name].network = up

    def freeze(self, name: str, frozen: bool) -> None:
        host = self.hosts[name]
        if host.powered:
            host.frozen = frozen

    def fence_device(self, name: str, mode: str, delay: int | None = None) -> None:
        host = self.hosts[name]
        if mode == "slow":
            host.fence_mode, host.fence_delay = "ok", delay
        else:
            host.fence_mode = mode
            if mode == "ok":
                host.fence_delay = None

    def delete(self, instance_id: str) -> None:
        """The owner deletes an instance (its running domain goes where its host is up)."""
        inst = self.instances[instance_id]
        inst.vm_state, inst.task_state = DELETED, None
        self.rebuilds.pop(instance_id, None)
        for host in self.hosts.values():
            if host.reachable and instance_id in host.domains:
                del host.domains[instance_id]

    # ---- the passing of time -----------------------------------------------------------
    def step(self) -> None:
        """Everything that happens at ``self.t`` besides commands and the controller."""
        for host in self.hosts.values():
            self._boot(host)
            self._membership(host)
            self._fence(host)
        for host in self.hosts.values():
            self._agent(host)
        for inst_id in sorted(self.rebuilds):
            self._rebuild(self.rebuilds[inst_id])
        self._check_copies()

    def _boot(self, host: Host) -> None:
        if host.powered and not host.booted and host.boot_done_at == self.t:
            host.booted, host.boot_done_at = True, None
            if host.hypervisor:
                host.agent_up, host.swept = True, False
                host.next_heartbeat = self.t
                host.sweep_due = self.t + self.timing.sweep_delay
                self.log(host.name, "booted; compute agent started")
                for inst in self.instances.values():
                    if inst.host == host.name and inst.task_state == REBUILDING:
                        self._start_rebuild(inst, host.name)
            else:
                self.log(host.name, "booted")

    def _membership(self, host: Host) -> None:
        if host.reachable:
            host.last_reachable, host.unreachable_since = self.t, None
            if host.membership is not NodeState.ONLINE:
                host.membership = NodeState.ONLINE
                if host.fence_due is not None:
                    host.fence_due = None
                    self.log("cluster", f"{host.name} rejoined; its pending fence is dropped")
                else:
                    self.log("cluster", f"{host.name} joined")
            return
        if host.unreachable_since is None:
            host.unreachable_since = self.t
        if (host.membership is NodeState.ONLINE
                and self.t - host.unreachable_since >= self.timing.token_timeout):
            host.membership = NodeState.UNCLEAN
            host.fence_due = self.t + self._fence_delay(host)
            self.log("cluster", f"{host.name} lost (unclean); fencing it")

    def _fence_delay(self, host: Host) -> int:
        return self.timing.fence_delay if host.fence_delay is None else host.fence_delay

    def _fence(self, host: Host) -> None:
        if host.membership is not NodeState.UNCLEAN or host.fence_due != self.t:
            return
        if host.fence_mode == "fail":
            host.fences.append(FenceEvent(self.t, "off", FenceResult.FAILED))
            host.fence_due = self.t + self.timing.fence_retry + self._fence_delay(host)
            self.log("fence", f"{host.name} off: FAILED; retried in {self.timing.fence_retry}s")
            return
        host.fences.append(FenceEvent(self.t, "off", FenceResult.SUCCESS))
        host.fence_due = None
        host.membership = NodeState.OFFLINE
        was_on = host.powered
        self._power_off(host)
        self.log("fence", f"{host.name} off: success" + ("; powered off" if was_on else ""))

    def _agent(self, host: Host) -> None:
        if not (host.hypervisor and host.agent_up and host.reachable):
            return
        if self.t >= host.next_heartbeat:
            host.last_heartbeat = self.t
            host.next_heartbeat = self.t + self.timing.heartbeat_interval
        if host.sweep_due is not None and self.t >= host.sweep_due:
            host.sweep_due, host.swept = None, True
            self._sweep(host)

    def _sweep(self, host: Host) -> None:
        """The agent's first reconciliation after start (core/compute/agent.py)."""
        for inst_id in sorted(host.domains):
            inst = self.instances[inst_id]
            if inst.host != host.name or inst.vm_state == DELETED:
                del host.domains[inst_id]
                where = "deleted" if inst.vm_state == DELETED else f"now on {inst.host}"
                self.log(host.name, f"destroyed stale domain of {inst.name} ({where})")
        for inst in self.instances.values():
            if (inst.host == host.name and inst.vm_state == ACTIVE and inst.task_state is None
                    and host.domains.get(inst.id) != RUNNING):
                inst.vm_state = STOPPED
                self.log(host.name, f"{inst.name} is not running: marked stopped")

    def _start_rebuild(self, inst: Instance, host: str) -> None:
        expected = state_after(inst.vm_state)
        took = inst.rebuild_time if inst.rebuild_time is not None else self.timing.rebuild_time
        self.rebuilds[inst.id] = Rebuild(inst.id, host, took, expected)

    def _rebuild(self, job: Rebuild) -> None:
        host = self.hosts[job.host]
        if not (host.reachable and host.agent_up):
            return  # a frozen or cut-off target makes no progress
        job.remaining -= 1
        if job.remaining > 0:
            return
        del self.rebuilds[job.instance]
        inst = self.instances[job.instance]
        if inst.host != job.host or inst.task_state != REBUILDING:
            return
        if inst.disk_missing:
            inst.vm_state, inst.task_state = ERROR, None
            inst.fault = f"disk of evacuated instance {inst.name} not found on shared storage"
            self.log(host.name, f"rebuild of {inst.name} failed: disk not found")
            return
        copies = [h.name for h in self.hosts.values()
                  if h.powered and h.domains.get(inst.id) == RUNNING]
        if copies and job.expected == ACTIVE:
            self.violation(f"{inst.name} started on {host.name} while running on "
                           f"{', '.join(copies)}")
        host.domains[inst.id] = RUNNING if job.expected == ACTIVE else DEFINED
        inst.vm_state, inst.task_state = job.expected, None
        self.log(host.name, f"{inst.name} rebuilt ({job.expected})")

    def _check_copies(self) -> None:
        for inst in self.instances.values():
            copies = [h.name for h in self.hosts.values()
                      if h.powered and h.domains.get(inst.id) == RUNNING]
            if len(copies) > 1:
                self.violation(f"{inst.name} runs on {', '.join(copies)}")

    # ---- the compute API ---------------------------------------------------------------
    def is_up(self, host: Host) -> bool:
        return scheduler.is_up(host.last_heartbeat, host.forced_down,
                               self.timing.service_down_time, at=self.t)

    def used(self, host: str) -> tuple[int, int, int]:
        mine = [i for i in self.instances.values() if i.host == host and i.vm_state != DELETED]
        return (sum(i.vcpus for i in mine), sum(i.ram_mb for i in mine),
                sum(i.disk_gb for i in mine))

    def evacuate(self, instance_id: str, source: str) -> str:
        """The compute API's evacuate, as core/compute/evacuate.py decides it."""
        if self.failing_evacuates:
            self.failing_evacuates -= 1
            raise TransientError("compute API answered 503")
        inst = self.instances.get(instance_id)
        if inst is None or inst.vm_state == DELETED:
            raise Conflict(f"Instance {instance_id} could not be found.")  # the API's 404
        if inst.host != source:
            self.violation(f"evacuate of {inst.name} from {source}, but it is on {inst.host}")
            raise Conflict(f"Instance {inst.name} is on {inst.host}, not {source}.")
        src = self.hosts[source]
        if not may_evacuate_from(src if src.hypervisor else None):
            raise Conflict(refusal(source))
        if not evacuable(inst.vm_state, inst.task_state):
            raise Conflict(not_evacuable(inst.name, inst.vm_state, inst.task_state))
        target = self._place(inst, source)
        self._check_evacuation(inst, src, self.hosts[target])
        inst.host = target
        inst.vm_state = state_after(inst.vm_state)
        inst.task_state, inst.fault = REBUILDING, None
        self.evacuations.append((self.t, inst.id, source, target))
        self._start_rebuild(inst, target)
        if self.crash_after_evacuate:
            self.crash_after_evacuate = False
            raise ControllerCrash(f"controller died after evacuating {inst.name}")
        return target

    def _place(self, inst: Instance, source: str) -> str:
        """``evacuate_instance``'s placement: the group's rule over where its other
        members are, the evacuation's request, the first candidate of an index of every
        hypervisor (the source included, as the compute API loads them: it weighs the
        fleet's scale and is filtered out as the source)."""
        avoid, only = frozenset[str](), None
        policy = self.groups.get(inst.group) if inst.group is not None else None
        if policy is not None:
            avoid, only = scheduler.group_rule(policy, frozenset(
                i.host for i in self.instances.values() if i.group == inst.group
                and i.id != inst.id and i.host and i.vm_state != DELETED))
        req = placement_request(inst.vcpus, inst.ram_mb, inst.disk_gb, source, avoid, only)
        index = scheduler.HostIndex(self._host_state(h) for h in self.hosts.values()
                                    if h.hypervisor)
        stats = scheduler.FilterStats()
        chosen = next(index.candidates(req, stats), None)
        if chosen is None:
            raise NoValidHost(f"No valid host to evacuate instance {inst.name} to "
                              f"({scheduler.describe(stats)}).")
        return chosen.host

    def _host_state(self, host: Host) -> scheduler.HostState:
        vcpus, ram, disk = self.used(host.name)
        return scheduler.HostState(
            host=host.name, enabled=host.enabled, up=self.is_up(host), reserved=host.reserved,
            vcpus=host.vcpus, memory_mb=host.ram_mb, disk_gb=host.disk_gb, vcpus_used=vcpus,
            memory_mb_used=ram, disk_gb_used=disk, cpu_ratio=host.cpu_ratio,
            ram_ratio=host.ram_ratio)

    def _check_evacuation(self, inst: Instance, source: Host, target: Host) -> None:
        fenced = [f for f in source.fences
                  if f.killed and f.at is not None and f.at >= source.last_reachable]
        if source.powered or not fenced:
            self.violation(f"{inst.name} evacuated from {source.name}, which was not fenced "
                           f"after it was last reachable (t={source.last_reachable})")
        if not target.reachable or not target.enabled or target.forced_down:
            self.violation(f"{inst.name} placed on {target.name}, which is dead, disabled or "
                           "forced down")
        if any(i == inst.id and s == source.name for _, i, s, _ in self.evacuations):
            self.violation(f"{inst.name} evacuated from {source.name} a second time")

    def host_clean(self, name: str) -> bool:
        host = self.hosts[name]
        return host.agent_up and host.swept and all(
            self.instances[i].host == name for i in host.domains)


class SimEnv(MemoryRecords):
    """:class:`~ha.evacuator.env.EvacuationEnv` over a :class:`World`. Records live here
    (the database), so a new controller on the same SimEnv is a failover."""

    def __init__(self, world: World,
                 printed_time: Callable[[float], str] | None = None) -> None:
        """``printed_time``: print the fence history as stonith_admin's XML, each
        ``completed`` as this gives it for the operation's time, and read it back with
        the real controller's parser (``fence_history``); None hands the world's
        history over as it is."""
        super().__init__()
        self.world = world
        self.printed_time = printed_time

    def now(self) -> float:
        return float(self.world.t)

    def log(self, message: str) -> None:
        self.world.log("ctl", message)

    def alert(self, message: str) -> None:
        self.world.log("ALERT", message)

    def nodes(self) -> dict[str, NodeState]:
        return {h.name: h.membership for h in self.world.hosts.values()}

    def fence_events(self, node: str) -> list[FenceEvent]:
        fences = self.world.hosts[node].fences
        if self.printed_time is None:
            return list(fences)
        return fence_history.fence_events(
            history_xml(node, fences, self.printed_time), node, self.log)

    def services(self) -> list[ServiceView]:
        w = self.world
        return [ServiceView(host=h.name, enabled=h.enabled, disabled_reason=h.disabled_reason,
                            forced_down=h.forced_down, reserved=h.reserved,
                            last_heartbeat=float(h.last_heartbeat),
                            alive=w.t - h.last_heartbeat <= w.timing.service_down_time)
                for h in w.hosts.values() if h.hypervisor]

    def instances_on(self, host: str) -> list[InstanceView]:
        return [InstanceView(id=i.id, name=i.name, vm_state=i.vm_state,
                             task_state=i.task_state, metadata=dict(i.metadata),
                             vcpus=i.vcpus, memory_mb=i.ram_mb, disk_gb=i.disk_gb,
                             server_group=i.group)
                for i in self.world.instances.values()
                if i.host == host and i.vm_state != DELETED]

    def instance_status(self, instance_id: str) -> InstanceStatus | None:
        i = self.world.instances.get(instance_id)
        if i is None or i.vm_state == DELETED:
            return None
        return InstanceStatus(host=i.host, vm_state=i.vm_state, task_state=i.task_state,
                              fault=i.fault)

    def disable(self, host: str, reason: str) -> None:
        h = self.world.hosts[host]
        h.enabled, h.disabled_reason = False, reason

    def enable(self, host: str) -> None:
        h = self.world.hosts[host]
        h.enabled, h.disabled_reason = True, None

    def set_forced_down(self, host: str, forced: bool) -> None:
        self.world.hosts[host].forced_down = forced

    def evacuate_many(self, calls: Sequence[tuple[str, str]]
                      ) -> list[str | EvacuateError]:
        """One call after the other, in order (a crash mid-batch leaves the rest
        uncalled, as a controller dying while its calls were in flight may)."""
        results: list[str | EvacuateError] = []
        for instance_id, source in calls:
            try:
                results.append(self.world.evacuate(instance_id, source))
            except EvacuateError as exc:
                results.append(exc)
        return results

    def host_clean(self, host: str) -> bool:
        return self.world.host_clean(host)



def history_xml(node: str, fences: Sequence[FenceEvent], printed: Callable[[float], str]
                ) -> str:
    """``stonith_admin --history NODE --verbose --output-as=xml`` for ``fences``: the
    element and attributes ``stonith_event_xml`` (lib/fencing/st_output.c) writes,
    ``completed`` only for operations that ended."""
    root = ET.Element("pacemaker-result", {"api-version": "2.25",
                                           "request": f"stonith_admin --history {node}"})
    history = ET.SubElement(root, "fence_history")
    for f in fences:
        attrs = {"action": f.action, "target": node, "client": "pacemaker-controld",
                 "origin": "node1", "status": f.result.value}
        if f.result is not FenceResult.PENDING and f.at is not None:
            attrs["completed"] = printed(f.at)
        ET.SubElement(history, "fence_event", attrs)
    return ET.tostring(root, encoding="unicode")

"""The instance half of the controller: one record per instance of a failed host,
written when its event reaches evacuating.

==========  ==================================================  =============================
state       when                                                next
==========  ==================================================  =============================
(new)       ``ha:enabled`` is false                             skipped
(new)       deleted or being deleted; still building (never     skipped
            ran); being evacuated by another event's record
(new)       a task other than rebuilding is in progress (the    failed (alert)
            compute API refuses to evacuate it)
(new)       otherwise                                           pending
pending     its source host came back before it was moved       skipped (alert once); done if
                                                                a returned target finished it
pending     its source is a dead target not yet fenced          pending (waits)
pending     ``next_try_at`` reached and fewer than              rebuilding (evacuate called,
            ``max_concurrent_rebuilds`` rebuilding; highest     attempts + 1)
            ``ha:priority`` first across all events
rebuilding  the call raised NoValidHost                         failed (alert; not retried)
rebuilding  the call raised TransientError                      pending after backoff, or
                                                                failed at ``max_attempts``
rebuilding  the call raised Conflict and the instance has       rebuilding (adopted)
            already left its source; any other Conflict         failed (alert)
rebuilding  no target recorded (a controller died in the call)  rebuilding (adopted) or pending
rebuilding  ACTIVE or STOPPED on the target, no task            done
rebuilding  ERROR on the target                                 failed (alert)
rebuilding  the target was lost, then fenced                    pending from the target, or
                                                                failed at ``max_attempts``
rebuilding  ``rebuild_timeout`` passed while the target is up   failed (alert)
rebuilding  the instance was deleted meanwhile                  skipped
==========  ==================================================  =============================

Records of all open events compete for the rebuild slots; those of a held event
wait (its rebuilds already started are still followed to their end).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from itertools import groupby
from typing import Any

from ha.evacuator.base import Policy, Steps, UnknownState, View
from ha.evacuator.env import (
    ACTIVE,
    BUILDING,
    DELETED,
    DELETING,
    ERROR,
    INSTANCE_TERMINAL,
    REBUILDING,
    STOPPED,
    Conflict,
    EvacuateError,
    EvacuationEnv,
    EventRecord,
    EventState,
    InstanceRecord,
    InstanceState,
    InstanceView,
    NodeState,
    NoValidHost,
)

OPT_OUT_VALUES = frozenset({"false", "0", "no", "off"})


class InstanceSteps(Steps):
    def __init__(self, env: EvacuationEnv, policy: Policy | None = None) -> None:
        super().__init__(env, policy)
        self._blocked = 0  # instances that waited for a rebuild slot last iteration

    # ---- instances: planning -----------------------------------------------------------
    def _plan(self, ev: EventRecord, view: View) -> None:
        """One record per instance on the host. Idempotent: a record already written
        (by a controller that died before the state change) is kept."""
        owners = {r.instance_id: e.id for e in view.events.values() if e.id != ev.id
                  for r in self.env.instance_records(e.id) if not r.terminal}
        for inst in sorted(self.env.instances_on(ev.host), key=lambda i: (i.name, i.id)):
            state, priority, why = self._decide(inst, owners)
            record = InstanceRecord(
                event_id=ev.id, instance_id=inst.id, name=inst.name, state=state,
                source=ev.host, priority=priority,
                expected_vm_state=STOPPED if inst.vm_state == STOPPED else ACTIVE,
                next_try_at=view.now, error=why,
                finished_at=view.now if state is not InstanceState.PENDING else None)
            if not self.env.add_instance_record(record):
                continue
            if state is InstanceState.PENDING:
                self.env.log(f"event {ev.id} {ev.host}: {inst.name} to evacuate "
                             f"(priority {priority}, {inst.vm_state})")
            elif state is InstanceState.SKIPPED:
                self.env.log(f"event {ev.id} {ev.host}: {inst.name} skipped: {why}")
            else:
                self.env.alert(f"event {ev.id} {ev.host}: {inst.name} cannot be evacuated: {why}")

    def _decide(self, inst: InstanceView, owners: Mapping[str, int]
                ) -> tuple[InstanceState, int, str | None]:
        priority = 0
        raw = inst.metadata.get("ha:priority")
        if raw is not None:
            try:
                priority = int(raw)
            except ValueError:
                self.env.log(f"{inst.name}: ha:priority {raw!r} is not an integer; using 0")
        if inst.metadata.get("ha:enabled", "true").strip().lower() in OPT_OUT_VALUES:
            return InstanceState.SKIPPED, priority, "opted out (ha:enabled=false)"
        if inst.vm_state == DELETED or inst.task_state == DELETING:
            return InstanceState.SKIPPED, priority, "being deleted"
        if inst.id in owners:
            return InstanceState.SKIPPED, priority, f"being evacuated by event {owners[inst.id]}"
        if inst.vm_state == BUILDING:
            return InstanceState.SKIPPED, priority, "still building (it never ran)"
        if inst.vm_state not in (ACTIVE, STOPPED, ERROR):
            raise UnknownState(f"instance {inst.id} has unknown vm_state {inst.vm_state!r}")
        if inst.task_state not in (None, REBUILDING):
            return (InstanceState.FAILED, priority,
                    f"task {inst.task_state} in progress; the compute API refuses to "
                    "evacuate it (reset its state, then evacuate it by hand)")
        return InstanceState.PENDING, priority, None

    # ---- instances: progress -----------------------------------------------------------
    def _instances(self, view: View) -> None:
        records = [(ev, r) for ev in view.events.values()
                   for r in self.env.instance_records(ev.id)]
        for ev, r in records:
            if r.state is InstanceState.REBUILDING:
                self._watch(ev, r, view)
            elif r.state is not InstanceState.PENDING and r.state not in INSTANCE_TERMINAL:
                raise UnknownState(f"instance record {r.instance_id} of event {ev.id} is in "
                                   f"unknown state {r.state!r}")
        # read again: a rebuild whose target died is pending again, from that target
        records = [(ev, r) for ev in view.events.values()
                   for r in self.env.instance_records(ev.id)]
        busy = sum(1 for _, r in records
                   if r.state is InstanceState.REBUILDING and self._occupies_slot(r, view))
        waiting = sorted(((ev, r) for ev, r in records
                          if r.state is InstanceState.PENDING),
                         key=lambda p: (-p[1].priority, p[0].id, p[1].name, p[1].instance_id))
        blocked = 0
        started: list[tuple[EventRecord, InstanceRecord]] = []
        for ev, r in waiting:
            if ev.state is not EventState.EVACUATING or r.next_try_at > view.now:
                continue
            if not self._source_ready(ev, r, view):
                continue
            if busy >= self.policy.max_concurrent_rebuilds:
                blocked += 1
                continue
            record = self._cas_instance(r, InstanceState.REBUILDING, attempts=r.attempts + 1,
                                        started_at=view.now, target=None)
            if record is not None:
                started.append((ev, record))
                busy += 1
        self._call(started, view)
        if blocked and blocked != self._blocked:
            self.env.log(f"{blocked} instance(s) wait for a rebuild slot ({busy} rebuilding, "
                         f"at most {self.policy.max_concurrent_rebuilds})")
        self._blocked = blocked

    def _occupies_slot(self, r: InstanceRecord, view: View) -> bool:
        """A rebuild counts against the bound unless its target is lost (nothing is
        being built there; it waits for that host's fence)."""
        return r.target is None or view.nodes.get(r.target) is NodeState.ONLINE

    def _cas_instance(self, r: InstanceRecord, new: InstanceState,
                      **fields: Any) -> InstanceRecord | None:
        if not self.env.update_instance(r.event_id, r.instance_id, r.state, new, **fields):
            return None
        return replace(r, state=new, **fields)

    def _finish(self, ev: EventRecord, r: InstanceRecord, new: InstanceState, why: str,
                view: View) -> None:
        if self._cas_instance(r, new, finished_at=view.now,
                              error=None if new is InstanceState.DONE else why) is None:
            return
        line = f"event {ev.id} {ev.host}: {r.name} {new.value}: {why}"
        if new is InstanceState.FAILED:
            self.env.alert(line)
        else:
            self.env.log(line)

    def _source_ready(self, ev: EventRecord, r: InstanceRecord, view: View) -> bool:
        """The instance's source is dead and fenced. When it is back instead, the
        record ends here (or, for a dead target that came back, waits for it to
        finish the rebuild itself)."""
        src = r.source
        fenced = ev if src == ev.host else self._fenced_event(src, view)
        if self._back(src, fenced, view):
            status = self.env.instance_status(r.instance_id)
            if status is None:
                self._finish(ev, r, InstanceState.SKIPPED, "deleted by its owner", view)
            elif (status.host == src and status.task_state is None
                  and status.vm_state in (ACTIVE, STOPPED) and src != ev.host):
                self._finish(ev, r, InstanceState.DONE, f"{status.vm_state} on {src}, "
                             "which came back and finished the rebuild", view)
            elif src == ev.host:
                self._finish(ev, r, InstanceState.SKIPPED, f"{src} came back before it was "
                             "evacuated; it stays there", view)
                current = view.events.get(ev.id, ev)
                self._alert_event(view, current, "returned-early", "the host came back before "
                                  "all its instances were evacuated; those stay on it")
            return False
        if fenced is None:
            self._once(f"wait-fence:{r.event_id}:{r.instance_id}:{src}",
                       f"event {ev.id} {ev.host}: {r.name} waits for {src} to be fenced")
            return False
        return True

    def _call(self, started: list[tuple[EventRecord, InstanceRecord]], view: View) -> None:
        """Call evacuate for records already marked rebuilding (so a controller that
        dies in a call leaves a trace its successor follows), one priority level at a
        time: the calls of a level may run concurrently, so when capacity is short it
        still goes to the higher levels first."""
        for _, level in groupby(started, key=lambda pair: pair[1].priority):
            batch = list(level)
            results = self.env.evacuate_many([(r.instance_id, r.source) for _, r in batch])
            for (ev, r), result in zip(batch, results, strict=True):
                if isinstance(result, NoValidHost):
                    self._finish(ev, r, InstanceState.FAILED, str(result), view)
                elif isinstance(result, Conflict):
                    self._conflict(ev, r, result, view)
                elif isinstance(result, EvacuateError):  # TransientError, or one unforeseen
                    self._retry(ev, r, f"evacuate failed: {result}", view)
                else:
                    self._rebuilding(ev, r, result, view, adopted=False)

    def _rebuilding(self, ev: EventRecord, r: InstanceRecord, target: str, view: View,
                    adopted: bool) -> None:
        if self._cas_instance(r, InstanceState.REBUILDING, target=target) is None:
            return
        how = "adopted the rebuild (started before a failover)" if adopted else (
            f"evacuating from {r.source}")
        self.env.log(f"event {ev.id} {ev.host}: {r.name} {how} to {target} "
                     f"(priority {r.priority}, attempt {r.attempts})")
        current = view.events.get(ev.id, ev)
        called = self.env.now()  # the call's answer, not the iteration's start
        self._cas_event(view, current, current.state,
                        first_rebuild_at=current.first_rebuild_at or called,
                        last_rebuild_at=called)

    def _retry(self, ev: EventRecord, r: InstanceRecord, why: str, view: View) -> None:
        if r.attempts >= self.policy.max_attempts:
            self._finish(ev, r, InstanceState.FAILED, f"{why} (after {r.attempts} attempts)",
                         view)
            return
        wait = self.policy.backoff(r.attempts)
        if self._cas_instance(r, InstanceState.PENDING, next_try_at=view.now + wait,
                              target=None, error=why) is not None:
            self.env.log(f"event {ev.id} {ev.host}: {r.name}: {why}; retry in {wait:g}s")

    def _conflict(self, ev: EventRecord, r: InstanceRecord, exc: Conflict,
                  view: View) -> bool:
        status = self.env.instance_status(r.instance_id)
        if status is None:
            self._finish(ev, r, InstanceState.SKIPPED, "deleted by its owner", view)
            return False
        if status.host is not None and status.host != r.source:
            self._rebuilding(ev, r, status.host, view, adopted=True)
            return True
        self._finish(ev, r, InstanceState.FAILED, f"the compute API refused: {exc}", view)
        return False

    def _watch(self, ev: EventRecord, r: InstanceRecord, view: View) -> None:
        """Follow one rebuild to its end."""
        status = self.env.instance_status(r.instance_id)
        if status is None or status.vm_state == DELETED:
            self._finish(ev, r, InstanceState.SKIPPED, "deleted by its owner during its rebuild",
                         view)
            return
        if r.target is None:  # a controller died between the call and its answer
            if status.host is not None and status.host != r.source:
                self._rebuilding(ev, r, status.host, view, adopted=True)
            elif self._cas_instance(r, InstanceState.PENDING, next_try_at=view.now,
                                    error="evacuate call interrupted") is not None:
                self.env.log(f"event {ev.id} {ev.host}: {r.name}: the evacuate call of a "
                             "previous controller did not happen; calling it again")
            return
        if status.host != r.target:
            self._finish(ev, r, InstanceState.SKIPPED, f"moved to {status.host} outside "
                         "the controller", view)
            return
        if status.task_state is None:
            if status.vm_state in (ACTIVE, STOPPED):
                took = view.now - (r.started_at or view.now)
                self._finish(ev, r, InstanceState.DONE, f"{status.vm_state} on {r.target} "
                             f"({took:g}s after evacuate)", view)
            elif status.vm_state == ERROR:
                self._finish(ev, r, InstanceState.FAILED, f"rebuild on {r.target} failed: "
                             f"{status.fault or 'no fault recorded'}", view)
            else:
                raise UnknownState(f"instance {r.instance_id} is {status.vm_state!r} after "
                                   "its rebuild")
            return
        if view.nodes.get(r.target) is not NodeState.ONLINE:
            self._target_lost(ev, r, view)
            return
        if r.started_at is not None and view.now - r.started_at > self.policy.rebuild_timeout:
            self._finish(ev, r, InstanceState.FAILED, f"rebuild on {r.target} not finished "
                         f"after {self.policy.rebuild_timeout:g}s", view)

    def _target_lost(self, ev: EventRecord, r: InstanceRecord, view: View) -> None:
        """The target died mid-rebuild: once it is fenced (by its own event), the
        instance is evacuated again, from there."""
        assert r.target is not None
        fenced = self._fenced_event(r.target, view)
        if fenced is None or (fenced.fenced_at or 0.0) < (r.started_at or 0.0):
            self._once(f"target-lost:{r.event_id}:{r.instance_id}:{r.target}",
                       f"event {ev.id} {ev.host}: {r.name}: target {r.target} lost during "
                       "the rebuild; waiting for its fence")
            return
        why = f"target {r.target} died during the rebuild"
        if r.attempts >= self.policy.max_attempts:
            self._finish(ev, r, InstanceState.FAILED, f"{why} (after {r.attempts} attempts)",
                         view)
            return
        if self._cas_instance(r, InstanceState.PENDING, source=r.target, target=None,
                              next_try_at=view.now, error=why) is not None:
            self.env.log(f"event {ev.id} {ev.host}: {r.name}: {why}; evacuating it again "
                         f"from {r.target}")

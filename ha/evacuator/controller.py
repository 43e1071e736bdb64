"""The evacuation controller: decisions only, as a state machine over persisted records.

Pacemaker runs one controller at a time; a loop calls :meth:`Controller.do_one_iteration`
about once a second. Each iteration reads the world through the
:class:`~ha.evacuator.env.EvacuationEnv` (cluster view, fence history, compute
services, instances), moves records forward with compare-and-swaps, and
returns. It never sleeps and never waits on a fixed delay: every step waits on
the fact it needs (the fence confirmed, the rebuild finished, the host clean).
Nothing but the log-once bookkeeping lives in memory, so a controller started
after a failover picks up every record where the old one left it.

The safety rule: an instance leaves a host only when that host's node is not a
cluster member (offline or unclean), a fence that powers it off completed after
the host was last alive (the newer of its last compute heartbeat and the last
time this controller saw the node online), and no heartbeat came from the host
after that fence. A fence whose completion time cannot be read, or lies ahead of
this controller's clock (by more than ``Policy.fence_clock_slack``), never counts:
an old fence read as a recent one would evacuate a node that left without being
fenced. Only then is its compute service forced down -- which is what
the compute API requires before it evacuates (``core.compute.evacuation_rule``).
Being unreachable is never enough: two copies of a VM on one disk destroy the data.

Events (one per failure of one host):

=====================  ==================================================  ==================
state                  when (checked every iteration)                      next
=====================  ==================================================  ==================
(none)                 the node is not ONLINE, no open event, and not the  detected; the
                       same outage as the host's last finished event       service disabled
detected               the node is ONLINE again                            aborted
detected               storm, no operator override                         held (alert)
detected               a successful off/reboot fence newer than            fencing_confirmed
                       ``alive_at``, and no heartbeat after it
detected               a failed fence / no fence for                       detected (alert
                       ``unfenced_alert_after`` / heartbeat after fence    once each)
fencing_confirmed      storm, no operator override                         held (alert)
fencing_confirmed      the host is back (ONLINE, or heartbeat after fence) aborted (alert)
fencing_confirmed      otherwise: force the service down, write one        evacuating
                       record per instance
evacuating             storm, no operator override                         held (alert)
evacuating             every instance record terminal, none failed         done
evacuating             every instance record terminal, some failed         failed (alert)
held                   not fenced yet and the node is ONLINE again         aborted
held                   storm over, or an operator released it              the furthest of
                                                                           detected /
                                                                           fencing_confirmed /
                                                                           evacuating reached
held                   an operator aborted it (:func:`operator_abort`)     aborted
done/failed/aborted    the host is ONLINE, heartbeating and clean, and     (unchanged; service
                       its service was disabled/forced down by us          enabled again)
=====================  ==================================================  ==================

Instance records have their own table in :mod:`ha.evacuator.rebuilds`. A state
not in these tables raises :class:`UnknownState`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ha.evacuator.base import REASON_PREFIX, Policy, Steps, UnknownState, View, ago
from ha.evacuator.env import (
    EvacuationEnv,
    EventRecord,
    EventState,
    FenceEvent,
    FenceResult,
    InstanceState,
    NodeState,
)
from ha.evacuator.rebuilds import InstanceSteps

__all__ = ["REASON_PREFIX", "Controller", "Policy", "Steps", "UnknownState",
           "operator_abort", "operator_release"]


class Controller(InstanceSteps):
    """The evacuation controller; the module docstring has its state table."""

    def __init__(self, env: EvacuationEnv, policy: Policy | None = None) -> None:
        super().__init__(env, policy)
        # When this process last saw each node online: with the compute heartbeat,
        # the "last alive" a fence must be newer than. Lost on failover, which only
        # makes the rule rely on the (persisted) heartbeat.
        self._seen_online: dict[str, float] = {}
        self._event_handlers: dict[EventState, Callable[[EventRecord, View],
                                                        EventRecord | None]] = {
            EventState.DETECTED: self._on_detected,
            EventState.FENCING_CONFIRMED: self._on_fencing_confirmed,
            EventState.EVACUATING: self._on_evacuating,
            EventState.HELD: self._on_held,
        }

    # ---- the loop body -----------------------------------------------------------------
    def do_one_iteration(self) -> None:
        view = self._observe()
        self._refresh(view)
        self._detect(view)
        newly_held: list[EventRecord] = []
        for ev in list(view.events.values()):
            self._advance(ev, view, newly_held)
        if newly_held:
            self._alert_storm(view, newly_held)
        self._refresh(view)
        self._instances(view)
        self._refresh(view)
        for ev in list(view.events.values()):
            if ev.state is EventState.EVACUATING:
                self._maybe_finish(ev, view)
        self._reenable(view)

    def _observe(self) -> View:
        now = self.env.now()
        nodes = self.env.nodes()
        services = {s.host: s for s in sorted(self.env.services(), key=lambda s: s.host)}
        for name, state in nodes.items():
            if state is NodeState.ONLINE:
                self._seen_online[name] = now
        failed = [h for h in services if h in nodes and nodes[h] is not NodeState.ONLINE]
        storm = bool(services) and len(failed) / len(services) > self.policy.max_failed_share
        return View(now, nodes, services, failed, storm)

    def _refresh(self, view: View) -> None:
        view.events = {e.id: e for e in self.env.open_events()}

    # ---- detection ---------------------------------------------------------------------
    def _detect(self, view: View) -> None:
        """Open an event for every hypervisor whose node is lost and has none."""
        open_hosts = {e.host for e in view.events.values()}
        for host, svc in view.services.items():
            node = view.nodes.get(host)
            if node is None:
                self._once(f"not-a-node:{host}", f"{host}: not a cluster node, so it cannot "
                           "be fenced and is never evacuated")
                continue
            if node is NodeState.ONLINE or host in open_hosts:
                continue
            alive_at = max(svc.last_heartbeat, self._seen_online.get(host, svc.last_heartbeat))
            last = self.env.last_event(host)
            if last is not None and last.terminal and last.reenabled_at is None and (
                    alive_at <= max(last.fenced_at or last.detected_at, last.detected_at)):
                continue  # the outage its last event already handled (or an operator ended)
            ev = self.env.create_event(host, view.now, alive_at)
            if ev is None:
                continue
            view.events[ev.id] = ev
            self.env.log(f"event {ev.id} {host}: node {node.value}, last alive "
                         f"{ago(view.now, alive_at)}; waiting for its fence")
            if svc.enabled:
                self.env.disable(host, f"{REASON_PREFIX} event {ev.id}: host lost")
                self._cas_event(view, ev, ev.state, disabled_at=view.now)
                self.env.log(f"event {ev.id} {host}: compute service disabled "
                             "(nothing new is scheduled there)")

    # ---- events ------------------------------------------------------------------------
    def _advance(self, ev: EventRecord, view: View, newly_held: list[EventRecord]) -> None:
        """Run the event's handlers until its state stops changing (a fence confirmed
        now starts the evacuation in the same iteration)."""
        for _ in range(len(EventState)):
            handler = self._event_handlers.get(ev.state)
            if handler is None:
                raise UnknownState(f"event {ev.id} is in unknown state {ev.state!r}")
            new = handler(ev, view)
            if new is None or new.state is ev.state or new.terminal:
                return
            if new.state is EventState.HELD:
                newly_held.append(new)
            ev = new

    def _held(self, ev: EventRecord, view: View) -> bool:
        return view.storm and not ev.storm_override

    def _hold(self, ev: EventRecord, view: View) -> EventRecord | None:
        reason = (f"storm: {len(view.failed)} of {len(view.services)} hypervisors failed "
                  f"({view.share:.2f} > {self.policy.max_failed_share:.2f})")
        self.env.log(f"event {ev.id} {ev.host}: held ({reason})")
        return self._cas_event(view, ev, EventState.HELD, reason=reason)

    def _alert_storm(self, view: View, held: list[EventRecord]) -> None:
        names = ", ".join(f"{e.host} (event {e.id})" for e in held)
        self.env.alert(f"evacuation storm: {len(view.failed)} of {len(view.services)} "
                       f"hypervisors failed ({', '.join(view.failed)}); not evacuating "
                       f"{names} until hosts come back or an operator releases them")

    def _on_detected(self, ev: EventRecord, view: View) -> EventRecord | None:
        if view.nodes.get(ev.host) is NodeState.ONLINE:
            self.env.log(f"event {ev.id} {ev.host}: node back online before any fence; "
                         "nothing evacuated")
            return self._cas_event(view, ev, EventState.ABORTED, finished_at=view.now,
                                   reason="the node rejoined the cluster before it was fenced")
        if self._held(ev, view):
            return self._hold(ev, view)
        history = self._readable(ev, view, self.env.fence_events(ev.host))
        fence = _newest(history, ev.alive_at, lambda f: f.killed)
        svc = view.services.get(ev.host)
        if fence is None:
            failed = _newest(history, ev.alive_at, lambda f: f.result is FenceResult.FAILED)
            if failed is not None:
                return self._alert_event(
                    view, ev, "fence-failed", f"fencing failed ({failed.action}, "
                    f"{ago(view.now, failed.at)}); NOT evacuating until a fence succeeds")
            if view.now - ev.detected_at >= self.policy.unfenced_alert_after:
                return self._alert_event(
                    view, ev, "unfenced", f"lost for {view.now - ev.detected_at:.0f}s and "
                    "not fenced; NOT evacuating until a fence succeeds")
            return None
        if svc is not None and svc.last_heartbeat > fence.at:
            return self._alert_event(
                view, ev, "alive-after-fence", f"its compute service heartbeated "
                f"{svc.last_heartbeat - fence.at:.0f}s after the fence reported success: the "
                "fence did not stop it (wrong device?); NOT evacuating")
        self.env.log(f"event {ev.id} {ev.host}: fence confirmed ({fence.action} "
                     f"{ago(view.now, fence.at)})")
        return self._cas_event(view, ev, EventState.FENCING_CONFIRMED, fenced_at=fence.at,
                               fence_confirmed_at=view.now)

    def _readable(self, ev: EventRecord, view: View, history: Sequence[FenceEvent]
                  ) -> list[tuple[float, FenceEvent]]:
        """The operations of ``history`` with a usable completion time, each with it.
        One without a time (pending, or unreadable), or with a time ahead of the
        controller's clock, is left out: it proves nothing about this outage."""
        usable = []
        for f in history:
            if f.at is not None and math.isfinite(f.at) and (
                    f.at <= view.now + self.policy.fence_clock_slack):
                usable.append((f.at, f))
            elif f.result is not FenceResult.PENDING:
                self._once(f"fence-time:{ev.id}:{f.action}:{f.result.value}:{f.at}",
                           f"event {ev.id} {ev.host}: a {f.action} {f.result.value} in the fence "
                           f"history has no usable completion time ({f.at!r}, now "
                           f"{view.now:.3f}); it does not count as a fence")
        return usable

    def _on_fencing_confirmed(self, ev: EventRecord, view: View) -> EventRecord | None:
        if self._held(ev, view):
            return self._hold(ev, view)
        if self._back(ev.host, ev, view):
            self.env.alert(f"event {ev.id} {ev.host}: host came back after its fence and "
                           "before evacuation; its instances stay on it")
            return self._cas_event(view, ev, EventState.ABORTED, finished_at=view.now,
                                   reason="the host came back before evacuation")
        self.env.set_forced_down(ev.host, True)
        self.env.log(f"event {ev.id} {ev.host}: compute service forced down")
        self._plan(ev, view)
        return self._cas_event(view, ev, EventState.EVACUATING, forced_down_at=view.now)

    def _on_evacuating(self, ev: EventRecord, view: View) -> EventRecord | None:
        if self._held(ev, view):
            return self._hold(ev, view)
        return None

    def _on_held(self, ev: EventRecord, view: View) -> EventRecord | None:
        if ev.fence_confirmed_at is None and view.nodes.get(ev.host) is NodeState.ONLINE:
            self.env.log(f"event {ev.id} {ev.host}: node back online while held; "
                         "nothing evacuated")
            return self._cas_event(view, ev, EventState.ABORTED, finished_at=view.now,
                                   reason="the node rejoined the cluster while held")
        if self._held(ev, view):
            return None
        resume = (EventState.EVACUATING if ev.forced_down_at is not None else
                  EventState.FENCING_CONFIRMED if ev.fence_confirmed_at is not None else
                  EventState.DETECTED)
        why = "released by an operator" if ev.storm_override else (
            f"{len(view.failed)} of {len(view.services)} hypervisors failed now")
        self.env.log(f"event {ev.id} {ev.host}: hold lifted ({why}); back to {resume.value}")
        return self._cas_event(view, ev, resume, reason=None)

    def _maybe_finish(self, ev: EventRecord, view: View) -> None:
        records = self.env.instance_records(ev.id)
        if not all(r.terminal for r in records):
            return
        failed = [r for r in records if r.state is InstanceState.FAILED]
        done = sum(r.state is InstanceState.DONE for r in records)
        skipped = sum(r.state is InstanceState.SKIPPED for r in records)
        new = EventState.FAILED if failed else EventState.DONE
        if self._cas_event(view, ev, new, finished_at=view.now,
                           all_active_at=None if failed else view.now,
                           reason=f"{len(failed)} instance(s) not evacuated" if failed else None):
            summary = (f"{done} evacuated, {skipped} skipped, {len(failed)} failed; "
                       f"{_phases(ev, view.now)}")
            self.env.log(f"event {ev.id} {ev.host}: {new.value}: {summary}")
            if failed:
                names = ", ".join(r.name for r in failed)
                self.env.alert(f"event {ev.id} {ev.host}: finished with failures ({names})")

    # ---- returning hosts ---------------------------------------------------------------
    def _reenable(self, view: View) -> None:
        """Give a returned host back to the scheduler once it is clean, undoing only
        what the controller itself did (an operator's disable stays)."""
        open_hosts = {e.host for e in view.events.values()}
        for host, svc in view.services.items():
            ours_disabled = not svc.enabled and (svc.disabled_reason or "").startswith(
                REASON_PREFIX)
            if not (ours_disabled or svc.forced_down) or host in open_hosts:
                continue
            last = self.env.last_event(host)
            ours_forced = (svc.forced_down and last is not None
                           and last.forced_down_at is not None and last.reenabled_at is None)
            if not (ours_disabled or ours_forced):
                continue
            if view.nodes.get(host) is not NodeState.ONLINE or not svc.alive:
                continue
            if not self.env.host_clean(host):
                self._once(f"unclean:{host}:{last.id if last else 0}",
                           f"{host}: back; waiting for it to destroy its stale domains before "
                           "enabling it")
                continue
            if ours_forced:
                self.env.set_forced_down(host, False)
            if ours_disabled:
                self.env.enable(host)
            self.env.log(f"{host}: back and clean; compute service enabled again")
            if last is not None:
                self.env.update_event(last.id, last.state, last.state, reenabled_at=view.now)


def _newest(history: Sequence[tuple[float, FenceEvent]], after: float,
            pred: Callable[[FenceEvent], bool]) -> TimedFence | None:
    """The newest fence operation completed after ``after`` that satisfies ``pred``."""
    matching = [TimedFence(at, f.action) for at, f in history if at > after and pred(f)]
    return max(matching, key=lambda f: f.at) if matching else None


@dataclass(frozen=True)
class TimedFence:
    """A fence operation with a completion time the controller can use."""

    at: float
    action: str


def _phases(ev: EventRecord, now: float) -> str:
    """Phase timings relative to the failure detection (what `evacuation show` prints)."""
    def rel(at: float | None) -> str:
        return "-" if at is None else f"+{at - ev.detected_at:g}s"

    return (f"fence confirmed {rel(ev.fence_confirmed_at)}, first rebuild "
            f"{rel(ev.first_rebuild_at)}, last rebuild {rel(ev.last_rebuild_at)}, "
            f"finished {rel(now)}")


def operator_release(env: EvacuationEnv, event: EventRecord) -> bool:
    """Let a held event go on although the storm threshold is exceeded."""
    return env.update_event(event.id, EventState.HELD, EventState.HELD, storm_override=True)


def operator_abort(env: EvacuationEnv, event: EventRecord) -> bool:
    """Stop an event: nothing more is evacuated for it (rebuilds already started
    finish on their own)."""
    if event.terminal:
        return False
    return env.update_event(event.id, event.state, EventState.ABORTED, finished_at=env.now(),
                            reason="aborted by an operator")

"""What the controller's two halves share: the policy, one iteration's view of the
world, the compare-and-swap of event records, alerts and the host's condition.

:mod:`ha.evacuator.controller` (events) and :mod:`ha.evacuator.rebuilds`
(instances) build on :class:`Steps`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ha.evacuator.env import (
    EvacuationEnv,
    EventRecord,
    EventState,
    NodeState,
    ServiceView,
)

# The reason the controller disables a service with: a service disabled with any
# other reason (an operator's) is never enabled by the controller.
REASON_PREFIX = "haven-evacuator:"


class UnknownState(RuntimeError):
    """A record is in a state the controller does not know: stop rather than guess."""


@dataclass(frozen=True)
class Policy:
    max_concurrent_rebuilds: int = 8  # instances in rebuilding at once, over all events
    max_failed_share: float = 0.5  # more hypervisors failed than this share: hold
    retry_base: float = 5.0  # seconds before the first retry; doubled each attempt
    retry_max: float = 60.0  # the longest wait between two attempts
    max_attempts: int = 3  # evacuate calls per instance before it is failed
    rebuild_timeout: float = 300.0  # a rebuild not finished by then on a live target fails
    unfenced_alert_after: float = 60.0  # lost and not fenced this long: alert
    # A fence completed this far ahead of the controller's clock is not counted (yet):
    # whole-second times are rounded up (up to 0.999 s), and the node that ran the
    # fence keeps its own (NTP-synchronised) clock.
    fence_clock_slack: float = 2.0

    def backoff(self, attempts: int) -> float:
        return float(min(self.retry_base * 2 ** max(attempts - 1, 0), self.retry_max))


@dataclass
class View:
    """One iteration's reading of the world (read once, used by every decision)."""

    now: float
    nodes: Mapping[str, NodeState]
    services: dict[str, ServiceView]
    failed: list[str]
    storm: bool
    events: dict[int, EventRecord] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return len(self.failed) / len(self.services) if self.services else 0.0


class Steps:
    """State shared by the decisions of one controller process (none of it needed
    for correctness after a failover: everything that matters is in the records)."""

    def __init__(self, env: EvacuationEnv, policy: Policy | None = None) -> None:
        self.env = env
        self.policy = policy or Policy()
        self._said: set[str] = set()  # log-once keys (repeated waits are logged once)

    def _cas_event(self, view: View, ev: EventRecord, new: EventState,
                   **fields: Any) -> EventRecord | None:
        if not self.env.update_event(ev.id, ev.state, new, **fields):
            return None
        record = replace(ev, state=new, **fields)
        if record.terminal:
            view.events.pop(ev.id, None)
        else:
            view.events[ev.id] = record
        return record

    def _alert_event(self, view: View, ev: EventRecord, key: str,
                     message: str) -> EventRecord | None:
        """Alert once per event and cause: the key is persisted with the event."""
        if key in ev.alerts:
            return None
        self.env.alert(f"event {ev.id} {ev.host}: {message}")
        return self._cas_event(view, ev, ev.state, alerts=(*ev.alerts, key))

    # ---- the host's condition ----------------------------------------------------------
    def _back(self, host: str, fence_event: EventRecord | None, view: View) -> bool:
        """The host is alive again: a cluster member, or heartbeating after its fence."""
        if view.nodes.get(host) is NodeState.ONLINE:
            return True
        svc = view.services.get(host)
        fenced_at = fence_event.fenced_at if fence_event is not None else None
        return svc is not None and fenced_at is not None and svc.last_heartbeat > fenced_at

    def _fenced_event(self, host: str, view: View) -> EventRecord | None:
        """The event of ``host`` that confirmed its fence and forced its service down
        (so the compute API accepts evacuating from it), for its current outage."""
        ev = next((e for e in view.events.values() if e.host == host), None)
        ev = ev or self.env.last_event(host)
        if ev is None or ev.forced_down_at is None or ev.state is EventState.ABORTED:
            return None
        return ev

    def _once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.env.log(message)


def ago(now: float, at: float) -> str:
    return f"{now - at:g}s ago"

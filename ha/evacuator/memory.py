"""The record half of :class:`~ha.evacuator.env.EvacuationEnv`, kept in memory.

Used by the simulator and the unit tests. It has the same compare-and-swap
semantics as the database tables (one open event per host, updates that name
the state they expect), so a controller replaced mid-evacuation by a new one
over the same :class:`MemoryRecords` behaves as it would after a real failover.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ha.evacuator.env import EventRecord, EventState, InstanceRecord, InstanceState


class MemoryRecords:
    def __init__(self) -> None:
        self._events: dict[int, EventRecord] = {}
        self._instances: dict[tuple[int, str], InstanceRecord] = {}
        self.cas_failures = 0  # lost compare-and-swaps (a test reads this)

    # ---- events ------------------------------------------------------------------------
    def open_events(self) -> list[EventRecord]:
        return [e for _, e in sorted(self._events.items()) if not e.terminal]

    def all_events(self) -> list[EventRecord]:
        return [e for _, e in sorted(self._events.items())]

    def event(self, event_id: int) -> EventRecord:
        return self._events[event_id]

    def last_event(self, host: str) -> EventRecord | None:
        mine = [e for e in self._events.values() if e.host == host]
        return max(mine, key=lambda e: e.id) if mine else None

    def create_event(self, host: str, detected_at: float, alive_at: float) -> EventRecord | None:
        if any(e.host == host and not e.terminal for e in self._events.values()):
            return None
        record = EventRecord(id=len(self._events) + 1, host=host, state=EventState.DETECTED,
                             detected_at=detected_at, alive_at=alive_at)
        self._events[record.id] = record
        return record

    def update_event(self, event_id: int, expected: EventState, new: EventState,
                     **fields: Any) -> bool:
        current = self._events[event_id]
        if current.state is not expected:
            self.cas_failures += 1
            return False
        self._events[event_id] = replace(current, state=new, **fields)
        return True

    # ---- instances ---------------------------------------------------------------------
    def instance_records(self, event_id: int) -> list[InstanceRecord]:
        return [r for (eid, _), r in sorted(self._instances.items()) if eid == event_id]

    def add_instance_record(self, record: InstanceRecord) -> bool:
        key = (record.event_id, record.instance_id)
        if key in self._instances:
            return False
        self._instances[key] = record
        return True

    def update_instance(self, event_id: int, instance_id: str, expected: InstanceState,
                        new: InstanceState, **fields: Any) -> bool:
        current = self._instances[(event_id, instance_id)]
        if current.state is not expected:
            self.cas_failures += 1
            return False
        self._instances[(event_id, instance_id)] = replace(current, state=new, **fields)
        return True

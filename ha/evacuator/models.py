"""The tables the real environment keeps the controller's records in.

One row per event and one per instance of an event, mirroring
:class:`~ha.evacuator.env.EventRecord` and :class:`~ha.evacuator.env.InstanceRecord`
field by field (the converters below are the whole mapping). Every update the
controller makes is ``UPDATE ... SET state = :new, ... WHERE id = :id AND state =
:expected``: one statement, so the compare-and-swap holds across Galera nodes.

``open_host`` is the event's host while the event is open and NULL once it is
terminal; its unique constraint is how the database, not the controller, keeps
a host to one open event (a second controller's insert fails).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.common.db import Base, Timestamp, part_metadata
from ha.evacuator.env import (
    EVENT_TERMINAL,
    EventRecord,
    EventState,
    InstanceRecord,
    InstanceState,
)


class EvacuatorTable(Base):
    """Base of the evacuator's tables: their metadata is the evacuator schema part's."""

    __abstract__ = True
    metadata = part_metadata()


class EvacuationEvent(EvacuatorTable):
    __tablename__ = "evacuation_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255), index=True)
    open_host: Mapped[str | None] = mapped_column(String(255), nullable=True, unique=True)
    state: Mapped[str] = mapped_column(String(32), index=True)
    detected_at: Mapped[float] = mapped_column(Timestamp)
    alive_at: Mapped[float] = mapped_column(Timestamp)
    fenced_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    fence_confirmed_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    disabled_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    forced_down_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    first_rebuild_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    last_rebuild_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    all_active_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    reenabled_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    alerts: Mapped[str] = mapped_column(Text, default="")  # comma-separated alert keys
    storm_override: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class EvacuationInstance(EvacuatorTable):
    __tablename__ = "evacuation_instances"
    event_id: Mapped[int] = mapped_column(
        ForeignKey("evacuation_events.id", ondelete="CASCADE"), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(36), primary_key=True, index=True)
    name: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(32), index=True)
    source: Mapped[str] = mapped_column(String(255))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    expected_vm_state: Mapped[str] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(String(255), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[float] = mapped_column(Timestamp, default=0.0)
    started_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


_EVENT_COLUMNS = tuple(c.name for c in EvacuationEvent.__table__.columns
                       if c.name != "open_host")
_INSTANCE_COLUMNS = tuple(c.name for c in EvacuationInstance.__table__.columns)


def event_record(row: EvacuationEvent) -> EventRecord:
    """The record of a row. An unknown state raises ValueError here, before any
    decision is taken on it."""
    values = {name: getattr(row, name) for name in _EVENT_COLUMNS}
    values["state"] = EventState(row.state)
    values["alerts"] = tuple(a for a in (row.alerts or "").split(",") if a)
    return EventRecord(**values)


def event_values(state: EventState, host: str, **fields: Any) -> dict[str, Any]:
    """Column values for an event update to ``state`` with ``fields`` (record names)."""
    values: dict[str, Any] = {"state": state.value,
                              "open_host": None if state in EVENT_TERMINAL else host}
    for name, value in fields.items():
        if name not in _EVENT_COLUMNS or name in ("id", "host", "state"):
            raise TypeError(f"evacuation events have no updatable field {name!r}")
        values[name] = ",".join(value) if name == "alerts" else value
    return values


def instance_record(row: EvacuationInstance) -> InstanceRecord:
    values = {name: getattr(row, name) for name in _INSTANCE_COLUMNS}
    values["state"] = InstanceState(row.state)
    return InstanceRecord(**values)


def instance_values(state: InstanceState, **fields: Any) -> dict[str, Any]:
    """Column values for an instance record update to ``state`` with ``fields``."""
    for name in fields:
        if name not in _INSTANCE_COLUMNS or name in ("event_id", "instance_id", "state"):
            raise TypeError(f"evacuation instances have no updatable field {name!r}")
    return {"state": state.value, **fields}


def instance_row(record: InstanceRecord) -> EvacuationInstance:
    values = {name: getattr(record, name) for name in _INSTANCE_COLUMNS}
    values["state"] = record.state.value
    return EvacuationInstance(**values)

"""The evacuation tables: the migration reaches them on SQLite and matches the
models; rows map to the controller's records and back; the compare-and-swap and
the one-open-event-per-host rule hold in the database itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select, update
from sqlalchemy.exc import IntegrityError

from core.common import migrate
from core.common.db import Database, rowcount
from ha.evacuator.env import EventRecord, EventState, InstanceRecord, InstanceState
from ha.evacuator.migrations import SCHEMA
from ha.evacuator.models import (
    EvacuationEvent,
    EvacuationInstance,
    event_record,
    event_values,
    instance_record,
    instance_row,
    instance_values,
)
from ha.extensions import HA_SCHEMAS


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'haven.db'}")
    migrate.upgrade(database, HA_SCHEMAS)
    yield database
    database.dispose()


def test_the_migration_creates_the_tables_and_matches_the_models(db: Database) -> None:
    assert migrate.current_revisions(db, [SCHEMA]) == migrate.head_revisions([SCHEMA])
    tables = set(inspect(db.engine).get_table_names())
    assert {"evacuation_events", "evacuation_instances", SCHEMA.version_table} <= tables
    assert migrate.differences(db, SCHEMA) == []


def test_the_migration_goes_down_and_up_again_alone(db: Database) -> None:
    """The evacuator's history is its own: going down to nothing drops its tables and
    leaves every other part's where it was."""
    others = [s for s in HA_SCHEMAS if s is not SCHEMA]
    before = migrate.current_revisions(db, others)
    command.downgrade(migrate.alembic_config(db, SCHEMA), "base")
    assert "evacuation_events" not in inspect(db.engine).get_table_names()
    assert migrate.current_revisions(db, [SCHEMA]) == {"evacuator": None}
    assert migrate.current_revisions(db, others) == before
    migrate.upgrade(db, HA_SCHEMAS)
    assert migrate.current_revisions(db, [SCHEMA]) == migrate.head_revisions([SCHEMA])


def new_event(host: str = "node3") -> EvacuationEvent:
    return EvacuationEvent(host=host, **event_values(EventState.DETECTED, host,
                                                     detected_at=10.0, alive_at=7.0))


def test_an_event_row_is_its_record_and_updates_are_compare_and_swaps(db: Database) -> None:
    with db.session() as s:
        s.add(new_event())
        s.commit()
        row = s.scalars(select(EvacuationEvent)).one()
        assert event_record(row) == EventRecord(id=row.id, host="node3",
                                                state=EventState.DETECTED,
                                                detected_at=10.0, alive_at=7.0)

        def cas(expected: EventState, new: EventState, **fields: object) -> int:
            return rowcount(s.execute(
                update(EvacuationEvent).where(EvacuationEvent.id == row.id,
                                              EvacuationEvent.state == expected.value)
                .values(**event_values(new, "node3", **fields))))

        assert cas(EventState.DETECTED, EventState.DETECTED, alerts=("fence-failed", "x")) == 1
        assert cas(EventState.DETECTED, EventState.FENCING_CONFIRMED, fenced_at=12.5) == 1
        assert cas(EventState.DETECTED, EventState.ABORTED) == 0  # lost: state moved on
        s.commit()
        s.refresh(row)
        record = event_record(row)
        assert (record.state, record.fenced_at, record.alerts) == (
            EventState.FENCING_CONFIRMED, 12.5, ("fence-failed", "x"))
        with pytest.raises(TypeError):
            event_values(EventState.DONE, "node3", id=5)


def test_the_database_keeps_one_open_event_per_host(db: Database) -> None:
    with db.session() as s:
        s.add(new_event())
        s.commit()
        s.add(new_event())
        with pytest.raises(IntegrityError):
            s.commit()
        s.rollback()
        s.execute(update(EvacuationEvent).values(**event_values(EventState.DONE, "node3")))
        s.add(new_event())  # the first is over: a new failure is a new event
        s.commit()
        states = s.scalars(select(EvacuationEvent.state).order_by(EvacuationEvent.id)).all()
        assert states == ["done", "detected"]


def test_an_instance_row_is_its_record(db: Database) -> None:
    record = InstanceRecord(event_id=1, instance_id="b7c1", name="vm1",
                            state=InstanceState.PENDING, source="node3", priority=5,
                            next_try_at=10.0)
    with db.session() as s:
        s.add(new_event())
        s.flush()
        s.add(instance_row(record))
        s.commit()
        won = rowcount(s.execute(
            update(EvacuationInstance).where(EvacuationInstance.state == "pending")
            .values(**instance_values(InstanceState.REBUILDING, attempts=1, target="node1"))))
        assert won == 1
        s.commit()
        row = s.scalars(select(EvacuationInstance)).one()
        assert instance_record(row) == InstanceRecord(
            event_id=1, instance_id="b7c1", name="vm1", state=InstanceState.REBUILDING,
            source="node3", priority=5, next_try_at=10.0, attempts=1, target="node1")
        row.state = "limbo"
        with pytest.raises(ValueError):
            instance_record(row)

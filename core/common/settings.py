"""Cloud-wide settings kept in the database (one row per key).

The first is the cloud id: a random uuid made once per cloud. The compute
agent stamps it into every domain it defines and only ever touches domains
that carry it, so two Haven clouds sharing a libvirtd (a developer's
``make run`` and the test suite, say) never destroy each other's guests.
"""

from __future__ import annotations

import contextlib
import uuid

from sqlalchemy import String, Text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.common.db import CommonTable, Database


class Setting(CommonTable):
    __tablename__ = "haven_settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def get_or_create(db: Database, key: str, make: str) -> str:
    """The setting's value, storing ``make`` first if it has none (race-safe)."""
    def read(session: Session) -> str | None:
        row = session.get(Setting, key)
        return row.value if row else None

    value = db.run_in_transaction(read)
    if value is not None:
        return value
    with contextlib.suppress(IntegrityError):  # another process stored one first: use theirs
        db.run_in_transaction(lambda s: s.add(Setting(key=key, value=make)))
    value = db.run_in_transaction(read)
    assert value is not None
    return value


def cloud_id(db: Database) -> str:
    return get_or_create(db, "cloud_id", str(uuid.uuid4()))

"""Schema migrations (Alembic), run by ``haven db upgrade`` and at all-in-one start.

Haven's parts share one database but not one history: each part (the shared
plumbing, each service, the evacuator) is a :class:`Schema` that owns its
tables, its revisions and its own Alembic version table
(``alembic_version_<name>``). The composition code hands the list of parts in
(``core.schemas.CORE_SCHEMAS`` plus a deployment's extensions); this module and
the Alembic environment next to it know none of them. A part can be added to a
cloud later (the HA deployment's evacuator) or evolve without touching the
others' histories.

Databases migrated before the split carry the old shared chain ("0001" ..
"0005") in the plain ``alembic_version`` table. Such a database is *adopted*:
each part that has no version table yet is stamped at the revision of its own
history that the old chain had reached (:attr:`Schema.legacy`), then upgraded
as usual. Nothing is re-created and no row is touched. The old table is left in
place: a part added later is adopted from it too.

The Alembic environment is built in code, so no alembic.ini has to be found
relative to the working directory: the migrations ship inside the packages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection

from core.common.db import Database

ENVIRONMENT = Path(__file__).with_name("migrations")

# The shared chain every database was migrated with before the parts had their
# own histories, oldest first. Frozen: new revisions go to a part's history.
LEGACY_TABLE = "alembic_version"
LEGACY_CHAIN = ("0001", "0002", "0003", "0004", "0005")


class MigrationError(Exception):
    """The database's schema history is not one this version can upgrade."""


@dataclass(frozen=True)
class Schema:
    """One part's schema: its name, where its revisions live, its tables.

    ``metadata`` is called only when the models are needed (comparing them
    with the database), so listing a part imports none of its models.
    ``legacy`` maps a revision of the old shared chain to the revision of this
    part's history that it had reached (only the revisions that changed this
    part's tables).
    """

    name: str
    versions: Path
    metadata: Callable[[], MetaData]
    legacy: Mapping[str, str] = field(default_factory=dict)

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.name}"


def alembic_config(db: Database, schema: Schema) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(ENVIRONMENT))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(schema.versions))
    cfg.attributes["engine"] = db.engine
    cfg.attributes["schema"] = schema
    return cfg


def _check_names(schemas: Sequence[Schema]) -> None:
    names = [s.name for s in schemas]
    if len(set(names)) != len(names):
        raise ValueError(f"schema parts named twice: {names}")


def legacy_revision(conn: Connection) -> str | None:
    """The old shared chain's revision of this database (None: never migrated by it).
    A revision outside the chain is refused: this version does not know that history."""
    if not inspect(conn).has_table(LEGACY_TABLE):
        return None
    found = list(conn.execute(text(f"SELECT version_num FROM {LEGACY_TABLE}")).scalars())
    if not found:
        return None
    if len(found) != 1 or found[0] not in LEGACY_CHAIN:
        raise MigrationError(f"{LEGACY_TABLE} holds {found}: not a revision of the shared "
                             f"chain {LEGACY_CHAIN[0]}..{LEGACY_CHAIN[-1]} this version upgrades")
    return str(found[0])


def adopted_revision(schema: Schema, legacy: str) -> str | None:
    """The revision of ``schema``'s history the old chain had reached at ``legacy``."""
    reached = LEGACY_CHAIN[: LEGACY_CHAIN.index(legacy) + 1]
    revisions = [schema.legacy[r] for r in reached if r in schema.legacy]
    return revisions[-1] if revisions else None


def _current(conn: Connection, schema: Schema) -> str | None:
    context = MigrationContext.configure(conn, opts={"version_table": schema.version_table})
    return context.get_current_revision()


def upgrade(db: Database, schemas: Sequence[Schema]) -> None:
    """Bring every part's schema to its head, adopting a database of the old shared chain
    first. Safe to run concurrently on a cluster's nodes only through the installer,
    which runs it on one node."""
    _check_names(schemas)
    for schema in schemas:
        cfg = alembic_config(db, schema)
        with db.engine.connect() as conn:
            current = _current(conn, schema)
            legacy = legacy_revision(conn) if current is None else None
        if legacy is not None:
            adopted = adopted_revision(schema, legacy)
            if adopted is not None:
                command.stamp(cfg, adopted)
        command.upgrade(cfg, "head")


def current_revisions(db: Database, schemas: Sequence[Schema]) -> dict[str, str | None]:
    """Each part's revision in the database (None: not migrated yet)."""
    with db.engine.connect() as conn:
        return {s.name: _current(conn, s) for s in schemas}


def head_revisions(schemas: Sequence[Schema]) -> dict[str, str | None]:
    """Each part's newest revision in this version of Haven."""
    return {s.name: ScriptDirectory(str(ENVIRONMENT), version_locations=[str(s.versions)])
            .get_current_head() for s in schemas}


def differences(db: Database, schema: Schema) -> list[Any]:
    """What differs between the part's models and its tables in the database (Alembic's
    autogenerate diff, restricted to the part's own tables): [] when they match."""
    metadata = schema.metadata()

    def mine(name: str | None, type_: str, _parent: Mapping[str, str | None]) -> bool:
        return type_ != "table" or name in metadata.tables

    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "include_name": mine, "compare_type": True})
        return list(compare_metadata(context, metadata))

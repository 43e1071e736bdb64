"""Databases migrated by the old shared chain (0001..0005, one ``alembic_version``) upgrade
to the per-part histories without error and with every row kept (SQLite and MariaDB).

The old chain is frozen in tests/data/legacy_chain exactly as it shipped; a database is
built with it, given a row in every table, then upgraded by today's code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text

from core.common import migrate
from core.common.db import Database
from core.schemas import CORE_SCHEMAS
from ha.extensions import HA_SCHEMAS

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy_chain"

# One row in each table of the old chain at 0005 (the columns without defaults).
ROWS = [
    "INSERT INTO domains VALUES ('default', 'Default', '', 1)",
    "INSERT INTO regions VALUES ('RegionOne', '')",
    "INSERT INTO roles VALUES ('r1', 'member', '')",
    "INSERT INTO services VALUES ('s1', 'compute', 'nova', '', 1)",
    "INSERT INTO endpoints VALUES ('e1', 's1', 'public', 'RegionOne', 'http://x', 1)",
    "INSERT INTO projects VALUES ('p1', 'demo', 'default', '', 1)",
    "INSERT INTO users (id, name, domain_id, description, enabled, created_at) "
    "VALUES ('u1', 'alice', 'default', '', 1, '2026-01-01 00:00:00')",
    "INSERT INTO role_assignments VALUES ('u1', 'project', 'p1', 'r1')",
    "INSERT INTO revocation_events (audit_id, issued_before, revoked_at) VALUES ('a', 1, 2)",
    "INSERT INTO haven_settings VALUES ('cloud_id', 'c-1')",
    "INSERT INTO flavors VALUES ('1', 'm1.tiny', 1, 256, 1, 1, NULL, 0)",
    "INSERT INTO instances (id, name, project_id, user_id, flavor_id, vcpus, memory_mb, "
    "root_gb, image_id, host, vm_state, power_state, deleted, created_at, updated_at) "
    "VALUES ('i1', 'pet', 'p1', 'u1', '1', 1, 256, 1, 'img1', 'hv1', 'active', 1, 0, 1, 1)",
    "INSERT INTO instance_metadata VALUES ('i1', 'ha:priority', '10')",
    "INSERT INTO images (id, name, status, visibility, protected, min_disk, min_ram, "
    "created_at, updated_at) VALUES ('img1', 'tiny', 'active', 'public', 0, 0, 0, 1, 1)",
    "INSERT INTO networks VALUES ('n1', 'provider', NULL, 1, 1, 1, 'flat', 'physnet1', "
    "1500, '', 1, 1)",
    EVENT_ROW := ("INSERT INTO evacuation_events (host, open_host, state, detected_at, "
                  "alive_at, alerts, storm_override) VALUES ('hv1', 'hv1', 'detected', 10, 7, "
                  "'', 0)"),
    "INSERT INTO quota_limits VALUES ('p1', 'instances', 20)",
    "INSERT INTO auth_failures VALUES ('user:u1', 3, 5)",
]
# What each row must still read after the upgrade (backquotes: MariaDB's, SQLite reads them).
KEPT = {
    "SELECT name FROM users WHERE id = 'u1'": "alice",
    "SELECT role_id FROM role_assignments WHERE user_id = 'u1'": "r1",
    "SELECT value FROM haven_settings WHERE `key` = 'cloud_id'": "c-1",
    "SELECT vm_state FROM instances WHERE id = 'i1'": "active",
    "SELECT value FROM instance_metadata WHERE instance_id = 'i1'": "10",
    "SELECT name FROM images WHERE id = 'img1'": "tiny",
    "SELECT name FROM networks WHERE id = 'n1'": "provider",
    "SELECT open_host FROM evacuation_events WHERE host = 'hv1'": "hv1",
    "SELECT hard_limit FROM quota_limits WHERE project_id = 'p1'": 20,
    "SELECT count FROM auth_failures WHERE subject = 'user:u1'": 3,
    "SELECT url FROM endpoints WHERE id = 'e1'": "http://x",
}


def legacy_upgrade(db: Database, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(LEGACY))
    cfg.attributes["engine"] = db.engine
    command.upgrade(cfg, revision)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


def test_a_database_at_the_old_head_upgrades_with_every_row_kept(db: Database) -> None:
    legacy_upgrade(db, "0005")
    with db.engine.begin() as conn:
        for row in ROWS:
            conn.execute(text(row))
    migrate.upgrade(db, HA_SCHEMAS)
    assert migrate.current_revisions(db, HA_SCHEMAS) == migrate.head_revisions(HA_SCHEMAS)
    with db.engine.connect() as conn:
        for query, value in KEPT.items():
            assert conn.execute(text(query)).scalar_one() == value, query
        # the old chain's record stays, for parts added later
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == (
            "0005")
    for schema in HA_SCHEMAS:
        assert migrate.differences(db, schema) == [], schema.name
    migrate.upgrade(db, HA_SCHEMAS)  # and again: nothing to do
    assert migrate.current_revisions(db, HA_SCHEMAS) == migrate.head_revisions(HA_SCHEMAS)


def test_a_database_in_the_middle_of_the_old_chain_gets_what_it_lacked(db: Database) -> None:
    """At 0003 the quota and auth-failure tables did not exist yet: adopted parts are
    stamped where the old chain was, and their later revisions create the rest."""
    legacy_upgrade(db, "0003")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO haven_settings VALUES ('cloud_id', 'c-3')"))
    assert not inspect(db.engine).has_table("quota_limits")
    migrate.upgrade(db, HA_SCHEMAS)
    tables = set(inspect(db.engine).get_table_names())
    assert {"quota_limits", "quota_locks", "auth_failures", "evacuation_events"} <= tables
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT value FROM haven_settings")).scalar_one() == "c-3"
    for schema in HA_SCHEMAS:
        assert migrate.differences(db, schema) == [], schema.name


def test_a_part_added_later_is_adopted_not_created_again(db: Database) -> None:
    """A bare cloud upgrades first; the HA deployment's evacuator part, added later,
    finds its tables made by the old chain and adopts them (its row is still there)."""
    legacy_upgrade(db, "0005")
    with db.engine.begin() as conn:
        conn.execute(text(EVENT_ROW))
    migrate.upgrade(db, CORE_SCHEMAS)
    assert migrate.current_revisions(db, HA_SCHEMAS)["evacuator"] is None
    migrate.upgrade(db, HA_SCHEMAS)
    assert migrate.current_revisions(db, HA_SCHEMAS) == migrate.head_revisions(HA_SCHEMAS)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT host FROM evacuation_events")).scalar_one() == "hv1"


def test_a_fresh_database_has_no_old_chain(db: Database) -> None:
    migrate.upgrade(db, HA_SCHEMAS)
    assert not inspect(db.engine).has_table("alembic_version")
    assert migrate.current_revisions(db, HA_SCHEMAS) == migrate.head_revisions(HA_SCHEMAS)


def test_an_unknown_old_revision_is_refused(db: Database) -> None:
    """A database from a history this version does not know is not guessed at."""
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0099')"))
    with pytest.raises(migrate.MigrationError, match="0099"):
        migrate.upgrade(db, HA_SCHEMAS)
    assert migrate.current_revisions(db, HA_SCHEMAS) == dict.fromkeys(
        (s.name for s in HA_SCHEMAS), None)

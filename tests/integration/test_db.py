"""Migrations and Galera-style retries against real databases."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.common import migrate
from core.common.db import Database, is_retryable
from ha.extensions import HA_SCHEMAS
from tests.conftest import MariaDB


def test_migrations_reach_head_and_match_the_models(database: Database) -> None:
    """Every part at its own head, in its own version table, its tables matching its models."""
    heads = migrate.head_revisions(HA_SCHEMAS)
    assert migrate.current_revisions(database, HA_SCHEMAS) == heads
    assert all(heads.values())
    migrate.upgrade(database, HA_SCHEMAS)  # a second upgrade is a no-op
    for schema in HA_SCHEMAS:
        assert migrate.differences(database, schema) == [], schema.name
    # no part's tables are left out of every part's models
    owned = {t for s in HA_SCHEMAS for t in s.metadata().tables}
    with database.engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
    assert tables - owned == {s.version_table for s in HA_SCHEMAS}


@pytest.mark.mariadb
def test_a_real_deadlock_is_retried_until_it_commits(mariadb: MariaDB) -> None:
    """Two transactions lock two rows in opposite orders: InnoDB kills one (error
    1213, what Galera also reports for a certification conflict); the retry wins."""
    db = Database(mariadb.url(mariadb.create_database()), max_retries=5)
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB"))
        conn.execute(text("INSERT INTO t VALUES (1, 0), (2, 0)"))
    barrier = threading.Barrier(2)
    attempts = {"a": 0, "b": 0}
    errors: list[BaseException] = []

    def worker(name: str, first: int, second: int) -> None:
        def unit(session: Session) -> None:
            attempts[name] += 1
            session.execute(text("UPDATE t SET v = v + 1 WHERE id = :i"), {"i": first})
            if attempts[name] == 1:
                barrier.wait(timeout=10)
            session.execute(text("UPDATE t SET v = v + 1 WHERE id = :i"), {"i": second})

        try:
            db.run_in_transaction(unit)
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=("a", 1, 2)),
               threading.Thread(target=worker, args=("b", 2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert attempts["a"] + attempts["b"] == 3  # exactly one of them ran twice
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT SUM(v) FROM t")).scalar() == 4  # no double effect


@pytest.mark.mariadb
def test_a_killed_connection_is_replaced_transparently(mariadb: MariaDB) -> None:
    """A Galera node restart behind the VIP kills pooled connections: pre-ping and
    the retry make the next unit of work succeed anyway."""
    db = Database(mariadb.url(mariadb.create_database()), pool_size=1, max_retries=3)
    with db.session() as s:
        conn_id = s.execute(text("SELECT CONNECTION_ID()")).scalar()
    import pymysql

    admin = pymysql.connect(unix_socket=str(mariadb.socket_path), user="root")
    with admin.cursor() as cur:
        cur.execute(f"KILL {int(conn_id)}")  # type: ignore[arg-type]
    admin.close()
    new_id = db.run_in_transaction(lambda s: s.execute(text("SELECT CONNECTION_ID()")).scalar())
    assert new_id != conn_id


def test_non_conflict_errors_are_not_retried(tmp_path: object) -> None:
    db = Database("sqlite://")
    calls = []

    def unit(session: Session) -> None:
        calls.append(1)
        session.execute(text("SELECT * FROM no_such_table"))

    with pytest.raises(OperationalError) as info:
        db.run_in_transaction(unit)
    assert not is_retryable(info.value)
    assert len(calls) == 1

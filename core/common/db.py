"""Database plumbing: engines, sessions, and Galera-safe retries.

One engine per process, built from the configured URL: a SQLite file for the
all-in-one, MariaDB/Galera through PyMySQL in a cluster. Units of work are
functions of a session; :func:`run_in_transaction` runs one, commits it, and
retries it from the start when the database says the transaction lost a
conflict (InnoDB deadlock, Galera certification failure, SQLite busy) or the
connection died mid-way (a Galera node went away behind the VIP). Only
idempotent units may be retried, which is why every state change in Haven is
a compare-and-swap that is safe to run twice.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Float, MetaData, create_engine, event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from core.common.private import private_file, sqlite_path

LOG = logging.getLogger(__name__)
T = TypeVar("T")

# Constraint names fixed by convention, so Alembic migrations can refer to them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Seconds since the epoch. 53 bits of mantissa: DOUBLE on MariaDB (a plain Float
# would be single precision there: ~2 minutes of resolution at today's dates).
Timestamp = Float(precision=53).with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")


class Base(DeclarativeBase):
    """Declarative base of every Haven table (one registry, so any model may name another).

    Each schema part (a service, the shared plumbing, the evacuator) derives an
    abstract base from it with its own :func:`part_metadata`: that metadata is
    what the part hands to its migrations (core.common.migrate.Schema), so no
    part's history ever sees another's tables.
    """

    metadata = MetaData(naming_convention=NAMING)


def part_metadata() -> MetaData:
    """A schema part's own table collection, with Haven's constraint naming."""
    return MetaData(naming_convention=NAMING)


class CommonTable(Base):
    """Base of the shared plumbing's tables (revocations, settings, quotas)."""

    __abstract__ = True
    metadata = part_metadata()


# MySQL/MariaDB error numbers that mean "run the transaction again".
_RETRY_MYSQL_ERRORS = {
    1205,  # lock wait timeout
    1213,  # deadlock (also Galera's certification failure)
    1047,  # WSREP has not yet prepared node for application use
    2006,  # server has gone away
    2013,  # lost connection during query
    2003,  # can't connect (the node behind the VIP is down; the next try gets another)
    1927,  # connection was killed
}


def is_retryable(exc: BaseException) -> bool:
    """True for errors after which re-running an idempotent transaction is correct."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _RETRY_MYSQL_ERRORS:
        return True
    message = str(orig).lower()
    return "database is locked" in message or "deadlock" in message


def make_engine(url: str, pool_size: int = 5, ssl_ca: str | None = None) -> Engine:
    """An engine for ``url`` with pre-ping (stale pooled connections are replaced
    before use, which is what makes a Galera node restart invisible to callers)."""
    if url.startswith("sqlite"):
        # No pre-ping: a SQLite file connection cannot go stale the way a server's can.
        engine = create_engine(
            url, pool_pre_ping=False, connect_args={"timeout": 30, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process crash
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # PyMySQL with a CA: verify_mode CERT_REQUIRED and the host name checked
    connect_args: dict[str, Any] = {"ssl": {"ca": ssl_ca}} if ssl_ca else {}
    return create_engine(
        url,
        connect_args=connect_args,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        pool_recycle=3600,
        isolation_level="READ COMMITTED",
    )


class Database:
    """The process's engine and session factory, built once."""

    def __init__(self, url: str, pool_size: int = 5, max_retries: int = 10,
                 ssl_ca: str | None = None) -> None:
        self.url = url
        path = sqlite_path(url)
        if path is not None and path.parent.is_dir():
            private_file(path)  # before SQLite makes it 0644 (its journals copy the mode)
        self.engine = make_engine(url, pool_size, ssl_ca)
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.max_retries = max_retries

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends normally and rolls back otherwise."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def run_in_transaction(self, unit: Callable[[Session], T]) -> T:
        """Run ``unit`` in its own transaction, retrying it on conflicts and lost connections.

        ``unit`` must be idempotent: it may run several times, and only the last
        run's effects are committed.
        """
        attempt = 0
        while True:
            try:
                with self.session() as session:
                    return unit(session)
            except DBAPIError as exc:
                if not is_retryable(exc) or attempt >= self.max_retries:
                    raise
                attempt += 1
                delay = min(0.05 * 2**attempt, 2.0) * random.uniform(0.5, 1.0)
                LOG.warning("retrying transaction (attempt %d) after: %s", attempt, exc.orig)
                time.sleep(delay)

    def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()


def rowcount(result: Any) -> int:
    """Rows an UPDATE/DELETE matched: how a compare-and-swap learns whether it won."""
    return int(result.rowcount)

"""Password lockout, per user (Keystone's security_compliance) and per client address.

Per user: after ``lockout_failure_attempts`` failed password authentications in
a row the user is locked for ``lockout_duration`` seconds. While locked even the
right password gets 401 "The account is locked for user: <id>." and the
password is not checked at all (as Keystone does: a locked account costs no
bcrypt time, and an attacker learns nothing about the password). A success, the
lock running out, or an administrator setting the user enabled clears the count.

Per client address: after ``source_failure_attempts`` failures from one address,
whichever users they named (a password sprayer tries one password on every
user, never reaching any user's limit), that address gets 429 with Retry-After
for ``source_lockout_duration`` seconds, before any user is looked up. Successes
do not clear it: one valid account must not let a sprayer go on. The address is
the socket peer; a proxy's X-Forwarded-For is believed only from a configured
trusted proxy.

State lives in the ``auth_failures`` table so every API node of a cluster counts
the same failures. A failure is recorded in a transaction of its own (the
request's own transaction is rolled back with its 401) by one UPDATE that
increments the count inside the database, so concurrent failures on any node
are never lost; Galera's write-set conflicts come back as deadlocks and are
retried. Several guesses already in flight when the limit is reached are still
checked (bounded by the API's worker threads), as in Keystone.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.common.config import HavenConfig
from core.common.db import Database, rowcount
from core.common.faults import Fault
from core.identity.models import DEFAULT_DOMAIN_ID, AuthFailure, User

Clock = Callable[[], float]


class AccountLocked(Fault):
    """The user reached the failure limit: 401 with Keystone's text."""

    status = 401

    def __init__(self, user_id: str) -> None:
        super().__init__(f"The account is locked for user: {user_id}.")


class SourceThrottled(Fault):
    """The client address reached its failure limit: 429 with Retry-After."""

    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many failed authentications from this address; "
                         f"retry after {retry_after} seconds.", Retry_After=str(retry_after))


def user_subject(user_id: str) -> str:
    return f"user:{user_id}"


def source_subject(address: str) -> str:
    return f"source:{address}"


def record_failure(session: Session, subject: str, now: float, reset_after: float) -> int:
    """Count one failure of ``subject``; return its count after this one.

    A count whose last failure is ``reset_after`` seconds old starts again at 1.
    The increment happens in the database (``count = count + 1``), and the row
    stays locked by this transaction until it ends, so the count read back is
    exactly this failure's. The first failure inserts the row; when another
    transaction inserted it first, the insert fails and the UPDATE runs again.
    """
    stale = AuthFailure.last_at <= now - reset_after
    # count first: MariaDB evaluates SET left to right, so count must see the old last_at
    bump = (update(AuthFailure).where(AuthFailure.subject == subject)
            .ordered_values((AuthFailure.count, case((stale, 1), else_=AuthFailure.count + 1)),
                            (AuthFailure.last_at, now))
            .execution_options(synchronize_session=False))
    if rowcount(session.execute(bump)) == 0:
        try:
            with session.begin_nested():
                session.add(AuthFailure(subject=subject, count=1, last_at=now))
            return 1
        except IntegrityError:
            session.execute(bump)
    return int(session.scalars(select(AuthFailure.count).where(
        AuthFailure.subject == subject)).one())


def remaining_lock(session: Session, subject: str, now: float, attempts: int,
                   duration: float) -> float:
    """Seconds ``subject`` stays locked (0 if it is not): ``attempts`` failures, the
    last less than ``duration`` ago. ``attempts`` 0 means never locked."""
    if attempts <= 0:
        return 0.0
    row = session.execute(select(AuthFailure.count, AuthFailure.last_at).where(
        AuthFailure.subject == subject)).first()
    if row is None:
        return 0.0
    count, last_at = row
    if count < attempts:
        return 0.0
    return max(0.0, float(last_at) + duration - now)


def clear(session: Session, subject: str) -> bool:
    """Forget ``subject``'s failures; True if there were any."""
    return rowcount(session.execute(delete(AuthFailure).where(
        AuthFailure.subject == subject).execution_options(synchronize_session=False))) > 0


def client_address(environ: Mapping[str, Any], trusted_proxies: Collection[str]) -> str:
    """The client's address: the socket peer, or the last X-Forwarded-For hop when the
    peer is a trusted proxy (the hops before it were written by the client itself)."""
    peer = str(environ.get("REMOTE_ADDR") or "unknown")
    if peer in trusted_proxies:
        hops = [h.strip() for h in str(environ.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
        for hop in reversed(hops):
            if hop and hop not in trusted_proxies:
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    break  # a garbled header: the proxy itself is all we know
    return peer


@dataclass(frozen=True)
class LockoutRules:
    user_attempts: int
    user_duration: int
    source_attempts: int
    source_duration: int
    exempt_user_names: frozenset[str]  # in the default domain: the service user
    trusted_proxies: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, cfg: HavenConfig) -> LockoutRules:
        ident = cfg.identity
        return cls(ident.lockout_failure_attempts, ident.lockout_duration,
                   ident.source_failure_attempts, ident.source_lockout_duration,
                   frozenset({cfg.service_user.name}), frozenset(ident.trusted_proxies))


class Lockout:
    """The lockout checks the token issuer makes around a password check."""

    def __init__(self, db: Database, rules: LockoutRules, clock: Clock = time.time) -> None:
        self.db = db
        self.rules = rules
        self.clock = clock

    def source(self, environ: Mapping[str, Any]) -> str:
        """The address of the client of the request with WSGI ``environ``."""
        return client_address(environ, self.rules.trusted_proxies)

    def exempt(self, user: User) -> bool:
        return user.domain_id == DEFAULT_DOMAIN_ID and user.name in self.rules.exempt_user_names

    def check_source(self, session: Session, source: str) -> None:
        """429 if ``source`` is refused for now."""
        left = remaining_lock(session, source_subject(source), self.clock(),
                              self.rules.source_attempts, self.rules.source_duration)
        if left > 0:
            raise SourceThrottled(max(1, math.ceil(left)))

    def check_user(self, session: Session, user: User) -> None:
        """401 "The account is locked" if ``user`` is locked for now."""
        if self.exempt(user):
            return
        if remaining_lock(session, user_subject(user.id), self.clock(),
                          self.rules.user_attempts, self.rules.user_duration) > 0:
            raise AccountLocked(user.id)

    def failed(self, source: str, user: User | None) -> None:
        """Count a wrong password from ``source`` (for ``user`` if it exists), committed at
        once in its own transaction: the request's is rolled back with its 401."""
        now = self.clock()
        rules = self.rules

        def unit(session: Session) -> None:
            if rules.source_attempts > 0:
                record_failure(session, source_subject(source), now, rules.source_duration)
            if user is not None and rules.user_attempts > 0 and not self.exempt(user):
                record_failure(session, user_subject(user.id), now, rules.user_duration)
            horizon = now - max(rules.source_duration, rules.user_duration)
            session.execute(delete(AuthFailure).where(AuthFailure.last_at <= horizon)
                            .execution_options(synchronize_session=False))

        self.db.run_in_transaction(unit)

    def succeeded(self, session: Session, user: User) -> None:
        """Clear ``user``'s count after a right password (a write only if there was one)."""
        subject = user_subject(user.id)
        if session.get(AuthFailure, subject) is not None:
            self.db.run_in_transaction(lambda s: clear(s, subject))

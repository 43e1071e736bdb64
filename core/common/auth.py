"""Token validation that every service does locally, and the request's auth context.

A token is valid when it decrypts with a current Fernet key, has not expired,
and no revocation event matches it. Revocation events (Keystone's model) are
the only shared state: revoking one token, disabling a user, changing a
password, removing a role or disabling a project each writes one event, and
every controller's next validation sees it through the shared database.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.common.db import CommonTable
from core.common.tokens import (
    MAX_TOKEN_LIFETIME_S,
    TokenCodec,
    TokenError,
    TokenPayload,
    now_us,
)

# Roles that imply others, as Keystone's bootstrap sets them up.
IMPLIED_ROLES = {"admin": ("member", "reader"), "member": ("reader",)}


def expand_roles(names: set[str]) -> set[str]:
    """``names`` plus every role they imply."""
    out = set(names)
    for name in names:
        out.update(IMPLIED_ROLES.get(name, ()))
    return out


class RevocationEvent(CommonTable):
    """Tokens issued at or before ``issued_before`` that match every set field are revoked."""

    __tablename__ = "revocation_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    audit_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    user_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    issued_before: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int] = mapped_column(BigInteger, index=True)


def revoke(
    session: Session,
    *,
    audit_id: str | None = None,
    user_id: str | None = None,
    project_id: str | None = None,
) -> None:
    """Record that matching tokens issued until now are no longer valid.

    Events older than any token that can still be valid are dropped here, where
    events are written, so the table every request fingerprints stays small.
    """
    if audit_id is None and user_id is None and project_id is None:
        raise ValueError("a revocation event must match something")
    prune_revocations(session, MAX_TOKEN_LIFETIME_S)
    now = now_us()
    session.add(
        RevocationEvent(
            audit_id=audit_id,
            user_id=user_id,
            project_id=project_id,
            issued_before=now,
            revoked_at=now,
        )
    )


def prune_revocations(session: Session, max_token_lifetime_s: int) -> int:
    """Drop events older than any token that could still be valid."""
    horizon = now_us() - (max_token_lifetime_s + 60) * 1_000_000
    rows = session.query(RevocationEvent).filter(RevocationEvent.revoked_at < horizon)
    return rows.delete(synchronize_session=False)


def _audit_text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


_FINGERPRINT_SQL = (
    "SELECT COUNT(*), COALESCE(MAX(id), 0), COALESCE(SUM(id), 0) FROM revocation_events"
)


class RevocationCache:
    """The current revocation events, held in memory and checked against the database
    on every request.

    Each request reads a fingerprint of the event table (count, max id, sum of
    ids: one cheap query) and reloads the events only when it changed. Any
    insert or prune changes the fingerprint, including a Galera commit whose
    auto-increment id is lower than one already seen, so every request decides
    on the database's current state while matching tokens costs dict lookups.
    ``generation`` increases on every reload: caches of things that revocations
    take away (roles, user state) are dropped when it moves.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fingerprint: tuple[int, int, int] | None = None
        self.generation = 0
        self._by_audit: dict[str, int] = {}
        self._by_user: dict[str, int] = {}
        self._by_project: dict[str, int] = {}
        self._by_user_project: dict[tuple[str, str], int] = {}

    def sync(self, session: Session) -> None:
        """Bring the cache up to date with ``session``'s view of the database,
        at most once per session (a request validates two tokens with one query)."""
        if session.info.get("revocations_synced"):
            return
        row = session.connection().exec_driver_sql(_FINGERPRINT_SQL).one()
        fingerprint = (int(row[0]), int(row[1]), int(row[2]))
        if fingerprint != self._fingerprint:
            events = session.execute(select(
                RevocationEvent.audit_id, RevocationEvent.user_id, RevocationEvent.project_id,
                RevocationEvent.issued_before)).all()
            by_audit: dict[str, int] = {}
            by_user: dict[str, int] = {}
            by_project: dict[str, int] = {}
            by_user_project: dict[tuple[str, str], int] = {}
            for audit_id, user_id, project_id, before in events:
                if audit_id is not None:
                    index: dict[Any, int] = by_audit
                    key: Any = audit_id
                elif user_id is not None and project_id is not None:
                    index, key = by_user_project, (user_id, project_id)
                elif user_id is not None:
                    index, key = by_user, user_id
                else:
                    index, key = by_project, project_id
                index[key] = max(index.get(key, 0), before)
            with self._lock:
                self._by_audit, self._by_user = by_audit, by_user
                self._by_project, self._by_user_project = by_project, by_user_project
                self._fingerprint = fingerprint
                self.generation += 1
        session.info["revocations_synced"] = True

    def is_revoked(self, payload: TokenPayload) -> bool:
        """True if an event revokes ``payload`` (call :meth:`sync` first)."""
        issued = payload.issued_at
        if self._by_user.get(payload.user_id, -1) >= issued:
            return True
        for audit in payload.audit_ids:
            if self._by_audit.get(_audit_text(audit), -1) >= issued:
                return True
        if payload.project_id is not None:
            if self._by_project.get(payload.project_id, -1) >= issued:
                return True
            key = (payload.user_id, payload.project_id)
            if self._by_user_project.get(key, -1) >= issued:
                return True
        return False


@dataclass(frozen=True)
class AuthContext:
    """Who is calling, in which scope, with which roles; what handlers and policy read."""

    user_id: str
    roles: frozenset[str]
    token: str
    payload: TokenPayload
    project_id: str | None = None
    domain_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


class Unauthorized(Exception):
    """No usable token: the API answers 401."""


class TokenValidator:
    """Validates tokens locally: decrypt, expiry, revocation events."""

    def __init__(self, codec: TokenCodec) -> None:
        self.codec = codec
        self.revocations = RevocationCache()

    def validate(self, session: Session, token: str) -> AuthContext:
        try:
            payload = self.codec.open(token)
        except TokenError as exc:
            raise Unauthorized(str(exc)) from exc
        self.revocations.sync(session)
        if self.revocations.is_revoked(payload):
            raise Unauthorized("token revoked")
        return AuthContext(
            user_id=payload.user_id,
            roles=frozenset(payload.roles),
            token=token,
            payload=payload,
            project_id=payload.project_id,
            domain_id=payload.domain_id,
        )

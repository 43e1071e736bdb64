"""Token validation that every service does locally, and the request's auth context.

A token is valid when it decrypts with a current Fernet key, has not expired,
and no revocation event matches it. Revocation events (Keystone's model) are
the only shared state: revoking one token, disabling a user, changing a
password, removing a role or disabling a project each writes one event, and
every controller's next validation sees it through the shared database.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from sqlalchemy import BigInteger, Integer, String, and_, or_, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.common.db import Base
from core.common.tokens import TokenCodec, TokenError, TokenPayload, now_us

# Roles that imply others, as Keystone's bootstrap sets them up.
IMPLIED_ROLES = {"admin": ("member", "reader"), "member": ("reader",)}


def expand_roles(names: set[str]) -> set[str]:
    """``names`` plus every role they imply."""
    out = set(names)
    for name in names:
        out.update(IMPLIED_ROLES.get(name, ()))
    return out


class RevocationEvent(Base):
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
    """Record that matching tokens issued until now are no longer valid."""
    if audit_id is None and user_id is None and project_id is None:
        raise ValueError("a revocation event must match something")
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


def is_revoked(session: Session, payload: TokenPayload) -> bool:
    """True if any revocation event matches ``payload``."""
    ev = RevocationEvent
    matches = [
        and_(ev.user_id == payload.user_id, ev.project_id.is_(None), ev.audit_id.is_(None)),
    ]
    if payload.audit_ids:
        matches.append(ev.audit_id.in_([_audit_text(a) for a in payload.audit_ids]))
    if payload.project_id is not None:
        matches.append(
            and_(ev.project_id == payload.project_id, ev.audit_id.is_(None),
                 or_(ev.user_id.is_(None), ev.user_id == payload.user_id))
        )
    query = (
        select(ev.id).where(ev.issued_before >= payload.issued_at).where(or_(*matches)).limit(1)
    )
    return session.execute(query).first() is not None


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

    def validate(self, session: Session, token: str) -> AuthContext:
        try:
            payload = self.codec.open(token)
        except TokenError as exc:
            raise Unauthorized(str(exc)) from exc
        if is_revoked(session, payload):
            raise Unauthorized("token revoked")
        return AuthContext(
            user_id=payload.user_id,
            roles=frozenset(payload.roles),
            token=token,
            payload=payload,
            project_id=payload.project_id,
            domain_id=payload.domain_id,
        )

"""Cached reads of what token issue and validation need: users, projects, domains, roles.

Tokens are validated far more often than identity data changes, and every
service validates on every call, so these reads are cached per process. Two
rules keep the cache honest:

* Everything that takes access away (disable, delete, password change, role
  removal) also writes a revocation event, and every request first syncs the
  revocation fingerprint (one query). When it moved, the whole cache is
  dropped, so no process acts on a removed right after its next request.
* What grants access or renames things writes no event; those entries expire
  after ``ttl`` seconds (default 5), and a lookup that finds nothing (a user
  with no role yet) is never cached, so a fresh grant works at once.

The password path does not use the cache for the user row: it needs the
current hash, and bcrypt's cost dwarfs the query anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.common.auth import RevocationCache, expand_roles
from core.identity.models import Domain, Project, Role, RoleAssignment, User

V = TypeVar("V")
MAX_ENTRIES = 20_000


@dataclass(frozen=True)
class UserRec:
    id: str
    name: str
    domain_id: str
    enabled: bool
    default_project_id: str | None


@dataclass(frozen=True)
class ProjectRec:
    id: str
    name: str
    domain_id: str
    enabled: bool


@dataclass(frozen=True)
class DomainRec:
    id: str
    name: str
    enabled: bool


def user_rec(u: User) -> UserRec:
    return UserRec(u.id, u.name, u.domain_id, u.enabled, u.default_project_id)


class Lookups:
    """The cached reads; ``revocations`` supplies the generation that invalidates them."""

    def __init__(self, revocations: RevocationCache, ttl: float = 5.0) -> None:
        self.revocations = revocations
        self.ttl = ttl
        self._lock = threading.Lock()
        self._generation = -1
        self._entries: dict[Any, tuple[float, Any]] = {}

    def cached(self, key: Any, load: Callable[[], V | None]) -> V | None:
        """``load()``'s value for ``key``, from the cache while fresh; None is not cached."""
        now = time.monotonic()
        generation = self.revocations.generation
        if generation != self._generation:
            with self._lock:
                self._entries = {}
                self._generation = generation
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        if value is not None:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries = {}
            self._entries[key] = (now + self.ttl, value)
        return value

    def user(self, session: Session, user_id: str) -> UserRec | None:
        def load() -> UserRec | None:
            u = session.get(User, user_id)
            return user_rec(u) if u else None

        return self.cached(("user", user_id), load)

    def project(self, session: Session, project_id: str) -> ProjectRec | None:
        def load() -> ProjectRec | None:
            p = session.get(Project, project_id)
            return ProjectRec(p.id, p.name, p.domain_id, p.enabled) if p else None

        return self.cached(("project", project_id), load)

    def project_by_name(self, session: Session, domain_id: str, name: str) -> ProjectRec | None:
        def load() -> str | None:
            return session.scalars(select(Project.id).where(
                Project.domain_id == domain_id, Project.name == name)).first()

        project_id = self.cached(("project-name", domain_id, name), load)
        return self.project(session, project_id) if project_id else None

    def domain(self, session: Session, domain_id: str) -> DomainRec | None:
        def load() -> DomainRec | None:
            d = session.get(Domain, domain_id)
            return DomainRec(d.id, d.name, d.enabled) if d else None

        return self.cached(("domain", domain_id), load)

    def domain_by_name(self, session: Session, name: str) -> DomainRec | None:
        def load() -> str | None:
            return session.scalars(select(Domain.id).where(Domain.name == name)).first()

        domain_id = self.cached(("domain-name", name), load)
        return self.domain(session, domain_id) if domain_id else None

    def roles(self, session: Session, user_id: str, target_type: str,
              target_id: str) -> frozenset[str]:
        """The user's roles on the target, implied roles included."""
        def load() -> frozenset[str] | None:
            names = session.scalars(
                select(Role.name).join(RoleAssignment, RoleAssignment.role_id == Role.id).where(
                    RoleAssignment.user_id == user_id,
                    RoleAssignment.target_type == target_type,
                    RoleAssignment.target_id == target_id)).all()
            return frozenset(expand_roles(set(names))) or None

        return self.cached(("roles", user_id, target_type, target_id), load) or frozenset()

    def role_ids(self, session: Session) -> dict[str, str]:
        def load() -> dict[str, str]:
            return {name: rid for name, rid in session.execute(select(Role.name, Role.id)).all()}

        return self.cached(("role-ids",), load) or {}

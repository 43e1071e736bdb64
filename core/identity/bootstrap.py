"""``haven identity bootstrap``: the default domain, the admin, the roles, the catalog.

Idempotent: run on every first start of the all-in-one and by the cluster
installer; a second run changes nothing except to re-sync the catalog with
configuration (and the admin password, when one is given explicitly).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.common.auth import revoke
from core.common.config import HavenConfig
from core.common.db import Database
from core.common.tokens import KeyRepository
from core.identity.catalog import sync_catalog
from core.identity.models import (
    DEFAULT_DOMAIN_ID,
    Domain,
    Project,
    Role,
    RoleAssignment,
    User,
)
from core.identity.passwords import hash_password, verify_password

ROLES = ("admin", "member", "reader")


@dataclass
class BootstrapResult:
    admin_user_id: str
    admin_project_id: str
    created_admin: bool


def ensure_project(session: Session, name: str, description: str) -> Project:
    project = session.scalars(select(Project).where(
        Project.domain_id == DEFAULT_DOMAIN_ID, Project.name == name)).first()
    if project is None:
        project = Project(name=name, domain_id=DEFAULT_DOMAIN_ID, description=description,
                          enabled=True)
        session.add(project)
        session.flush()
    return project


def ensure_user(session: Session, cfg: HavenConfig, name: str, password: str,
                project: Project, description: str) -> tuple[User, bool]:
    """The user ``name`` with ``password`` (re-hashed, and its tokens revoked, only when
    the password changed); True when it was created."""
    user = session.scalars(select(User).where(
        User.domain_id == DEFAULT_DOMAIN_ID, User.name == name)).first()
    if user is None:
        user = User(name=name, domain_id=DEFAULT_DOMAIN_ID, enabled=True,
                    default_project_id=project.id,
                    password_hash=hash_password(password, cfg.identity.bcrypt_cost),
                    created_at=datetime.now(UTC).replace(tzinfo=None), description=description)
        session.add(user)
        session.flush()
        return user, True
    if not verify_password(password, user.password_hash):
        user.password_hash = hash_password(password, cfg.identity.bcrypt_cost)
        revoke(session, user_id=user.id)
    return user, False


def grant(session: Session, user_id: str, project_id: str, role_id: str) -> None:
    if session.get(RoleAssignment, (user_id, "project", project_id, role_id)) is None:
        session.add(RoleAssignment(user_id=user_id, target_type="project", target_id=project_id,
                                   role_id=role_id))


def bootstrap(cfg: HavenConfig, db: Database, admin_password: str) -> BootstrapResult:
    KeyRepository(cfg.fernet_key_dir, cfg.identity.max_active_keys).setup()

    def unit(session: Session) -> BootstrapResult:
        if session.get(Domain, DEFAULT_DOMAIN_ID) is None:
            session.add(Domain(id=DEFAULT_DOMAIN_ID, name="Default",
                               description="The default domain", enabled=True))
            session.flush()
        roles = {}
        for name in ROLES:
            role = session.scalars(select(Role).where(Role.name == name)).first()
            if role is None:
                role = Role(name=name, description="")
                session.add(role)
                session.flush()
            roles[name] = role
        project = ensure_project(session, cfg.identity.admin_project,
                                 "Bootstrap project for the cloud administrator")
        user, created = ensure_user(session, cfg, cfg.identity.admin_user, admin_password,
                                    project, "")
        grant(session, user.id, project.id, roles["admin"].id)
        service_project = ensure_project(session, cfg.service_user.project,
                                         "Project of Haven's own service user")
        service_user, _ = ensure_user(session, cfg, cfg.service_user.name,
                                      cfg.service_password(), service_project,
                                      "Haven services calling each other")
        grant(session, service_user.id, service_project.id, roles["admin"].id)
        sync_catalog(session, cfg)
        return BootstrapResult(user.id, project.id, created)

    return db.run_in_transaction(unit)

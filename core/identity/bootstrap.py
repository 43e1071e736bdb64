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
        project = session.scalars(select(Project).where(
            Project.domain_id == DEFAULT_DOMAIN_ID, Project.name == cfg.identity.admin_project)
        ).first()
        if project is None:
            project = Project(name=cfg.identity.admin_project, domain_id=DEFAULT_DOMAIN_ID,
                              description="Bootstrap project for the cloud administrator",
                              enabled=True)
            session.add(project)
            session.flush()
        user = session.scalars(select(User).where(
            User.domain_id == DEFAULT_DOMAIN_ID, User.name == cfg.identity.admin_user)
        ).first()
        created = user is None
        if user is None:
            user = User(name=cfg.identity.admin_user, domain_id=DEFAULT_DOMAIN_ID,
                        enabled=True, default_project_id=project.id,
                        password_hash=hash_password(admin_password, cfg.identity.bcrypt_cost),
                        created_at=datetime.now(UTC).replace(tzinfo=None), description="")
            session.add(user)
            session.flush()
        elif not verify_password(admin_password, user.password_hash):
            user.password_hash = hash_password(admin_password, cfg.identity.bcrypt_cost)
            revoke(session, user_id=user.id)
        key = (user.id, "project", project.id, roles["admin"].id)
        if session.get(RoleAssignment, key) is None:
            session.add(RoleAssignment(user_id=user.id, target_type="project",
                                       target_id=project.id, role_id=roles["admin"].id))
        sync_catalog(session, cfg)
        return BootstrapResult(user.id, project.id, created)

    return db.run_in_transaction(unit)

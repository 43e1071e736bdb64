"""Keystone v3 resource routes: domains, projects, users, roles, grants, catalog.

Every change that takes access away (disable, delete, password change, role
removal) writes a revocation event in the same transaction, so no token
outlives the access it stood for on any controller.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import bottle
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.common import policy
from core.common.auth import revoke
from core.common.db import Base
from core.common.faults import BadRequest, Conflict, Fault, Forbidden, NotFound
from core.common.wsgi import auth, base_url, field, json_body, session
from core.identity import lockout, views
from core.identity.models import (
    DEFAULT_DOMAIN_ID,
    Domain,
    Endpoint,
    Project,
    Region,
    Role,
    RoleAssignment,
    Service,
    User,
)
from core.identity.passwords import MAX_PASSWORD_BYTES, hash_password, verify_password

M = TypeVar("M", bound=Base)
NAME_MAX = 255


def get_or_404(model: type[M], obj_id: str, kind: str) -> M:
    obj = session().get(model, obj_id)
    if obj is None:
        raise NotFound(f"Could not find {kind}: {obj_id}.")
    return obj


def _name(body: dict[str, Any], path: str) -> str:
    value = field(body, path, str).strip()
    if not value or len(value) > NAME_MAX:
        raise BadRequest(f"Invalid input for field '{path}': must be 1 to {NAME_MAX} characters.")
    return value


def _flush_unique(kind: str, name: str) -> None:
    try:
        session().flush()
    except IntegrityError:
        raise Conflict(f"Conflict occurred attempting to store {kind} - Duplicate entry "
                       f"found with name {name}.") from None


def _bool_filter(value: str, name: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"Invalid value for query parameter '{name}': expected true or false.")


def _enforce(action: str, **target: Any) -> None:
    policy.enforce(auth(), action, target)


def _revoke_grants_of(sess: Session, target_type: str, target_id: str) -> None:
    users = sess.scalars(select(RoleAssignment.user_id).where(
        RoleAssignment.target_type == target_type, RoleAssignment.target_id == target_id)
    ).all()
    for user_id in set(users):
        revoke(sess, user_id=user_id)
    sess.execute(delete(RoleAssignment).where(RoleAssignment.target_type == target_type,
                                              RoleAssignment.target_id == target_id))


def register_domains(app: bottle.Bottle) -> None:
    @app.get("/v3/domains")
    def list_domains() -> dict[str, Any]:
        _enforce("identity:list_domains")
        query = select(Domain).order_by(Domain.name)
        if "name" in bottle.request.query:
            query = query.where(Domain.name == bottle.request.query["name"])
        if "enabled" in bottle.request.query:
            query = query.where(Domain.enabled.is_(
                _bool_filter(bottle.request.query["enabled"], "enabled")))
        rows = session().scalars(query).all()
        return views.collection(base_url(), "domains",
                                [views.domain_view(base_url(), d) for d in rows])

    @app.post("/v3/domains")
    def create_domain() -> dict[str, Any]:
        _enforce("identity:create_domain")
        body = field(json_body(), "domain", dict)
        name = _name(body, "name")
        domain = Domain(name=name, description=field(body, "description", str, ""),
                        enabled=field(body, "enabled", bool, True))
        session().add(domain)
        _flush_unique("domain", name)
        bottle.response.status = 201
        return {"domain": views.domain_view(base_url(), domain)}

    @app.get("/v3/domains/<domain_id>")
    def show_domain(domain_id: str) -> dict[str, Any]:
        _enforce("identity:get_domain", domain_id=domain_id)
        return {"domain": views.domain_view(base_url(), get_or_404(Domain, domain_id, "domain"))}

    @app.route("/v3/domains/<domain_id>", method="PATCH")
    def update_domain(domain_id: str) -> dict[str, Any]:
        _enforce("identity:update_domain")
        domain = get_or_404(Domain, domain_id, "domain")
        body = field(json_body(), "domain", dict)
        if "name" in body:
            domain.name = _name(body, "name")
        if "description" in body:
            domain.description = field(body, "description", str, "")
        if "enabled" in body:
            enabled = field(body, "enabled", bool)
            if not enabled and domain.id == DEFAULT_DOMAIN_ID:
                raise Forbidden("The default domain cannot be disabled.")
            if domain.enabled and not enabled:
                for user_id in session().scalars(
                        select(User.id).where(User.domain_id == domain.id)).all():
                    revoke(session(), user_id=user_id)
                for project_id in session().scalars(
                        select(Project.id).where(Project.domain_id == domain.id)).all():
                    revoke(session(), project_id=project_id)
            domain.enabled = enabled
        _flush_unique("domain", domain.name)
        return {"domain": views.domain_view(base_url(), domain)}

    @app.delete("/v3/domains/<domain_id>")
    def delete_domain(domain_id: str) -> None:
        _enforce("identity:delete_domain")
        domain = get_or_404(Domain, domain_id, "domain")
        if domain.id == DEFAULT_DOMAIN_ID:
            raise Forbidden("The default domain cannot be deleted.")
        if domain.enabled:
            raise Forbidden("Cannot delete a domain that is enabled, please disable it first.")
        sess = session()
        _revoke_grants_of(sess, "domain", domain.id)
        for project in sess.scalars(select(Project).where(Project.domain_id == domain.id)).all():
            _revoke_grants_of(sess, "project", project.id)
            sess.delete(project)
        for user in sess.scalars(select(User).where(User.domain_id == domain.id)).all():
            revoke(sess, user_id=user.id)
            sess.delete(user)
        sess.flush()
        sess.delete(domain)


def _domain_id(body: dict[str, Any], path: str) -> str:
    domain_id = field(body, path, str, DEFAULT_DOMAIN_ID)
    if session().get(Domain, domain_id) is None:
        raise BadRequest(f"Invalid input for field '{path}': no domain {domain_id}.")
    return domain_id


def register_projects(app: bottle.Bottle) -> None:
    @app.get("/v3/projects")
    def list_projects() -> dict[str, Any]:
        _enforce("identity:list_projects")
        q = bottle.request.query
        query = select(Project).order_by(Project.name)
        if "name" in q:
            query = query.where(Project.name == q["name"])
        if "domain_id" in q:
            query = query.where(Project.domain_id == q["domain_id"])
        if "enabled" in q:
            query = query.where(Project.enabled.is_(_bool_filter(q["enabled"], "enabled")))
        rows = session().scalars(query).all()
        return views.collection(base_url(), "projects",
                                [views.project_view(base_url(), p) for p in rows])

    @app.post("/v3/projects")
    def create_project() -> dict[str, Any]:
        _enforce("identity:create_project")
        body = field(json_body(), "project", dict)
        name = _name(body, "name")
        if field(body, "is_domain", bool, False):
            raise BadRequest("Invalid input for field 'project.is_domain': projects acting as "
                             "domains are not supported; create a domain.")
        project = Project(name=name, domain_id=_domain_id(body, "project.domain_id"),
                          description=field(body, "description", str, ""),
                          enabled=field(body, "enabled", bool, True))
        session().add(project)
        _flush_unique("project", name)
        bottle.response.status = 201
        return {"project": views.project_view(base_url(), project)}

    @app.get("/v3/projects/<project_id>")
    def show_project(project_id: str) -> dict[str, Any]:
        _enforce("identity:get_project", project_id=project_id)
        project = get_or_404(Project, project_id, "project")
        return {"project": views.project_view(base_url(), project)}

    @app.route("/v3/projects/<project_id>", method="PATCH")
    def update_project(project_id: str) -> dict[str, Any]:
        _enforce("identity:update_project")
        project = get_or_404(Project, project_id, "project")
        body = field(json_body(), "project", dict)
        if "name" in body:
            project.name = _name(body, "name")
        if "description" in body:
            project.description = field(body, "description", str, "")
        if "enabled" in body:
            enabled = field(body, "enabled", bool)
            if project.enabled and not enabled:
                revoke(session(), project_id=project.id)
            project.enabled = enabled
        _flush_unique("project", project.name)
        return {"project": views.project_view(base_url(), project)}

    @app.delete("/v3/projects/<project_id>")
    def delete_project(project_id: str) -> None:
        _enforce("identity:delete_project")
        project = get_or_404(Project, project_id, "project")
        revoke(session(), project_id=project.id)
        _revoke_grants_of(session(), "project", project.id)
        session().delete(project)


def _password(body: dict[str, Any], path: str) -> str:
    password = field(body, path, str)
    if not password or len(password.encode()) > MAX_PASSWORD_BYTES:
        raise BadRequest(f"Invalid input for field '{path}': must be 1 to "
                         f"{MAX_PASSWORD_BYTES} bytes.")
    return password


def register_users(app: bottle.Bottle, bcrypt_cost: int, locks: lockout.Lockout) -> None:
    def default_project(body: dict[str, Any]) -> str | None:
        project_id = field(body, "default_project_id", str, None)
        if project_id is not None and session().get(Project, project_id) is None:
            raise BadRequest(f"Invalid input for field 'user.default_project_id': no project "
                             f"{project_id}.")
        return project_id

    @app.get("/v3/users")
    def list_users() -> dict[str, Any]:
        _enforce("identity:list_users")
        q = bottle.request.query
        query = select(User).order_by(User.name)
        if "name" in q:
            query = query.where(User.name == q["name"])
        if "domain_id" in q:
            query = query.where(User.domain_id == q["domain_id"])
        if "enabled" in q:
            query = query.where(User.enabled.is_(_bool_filter(q["enabled"], "enabled")))
        rows = session().scalars(query).all()
        return views.collection(base_url(), "users", [views.user_view(base_url(), u) for u in rows])

    @app.post("/v3/users")
    def create_user() -> dict[str, Any]:
        _enforce("identity:create_user")
        body = field(json_body(), "user", dict)
        name = _name(body, "name")
        password = _password(body, "password") if body.get("password") is not None else None
        user = User(
            name=name,
            domain_id=_domain_id(body, "user.domain_id"),
            description=field(body, "description", str, ""),
            email=field(body, "email", str, None),
            enabled=field(body, "enabled", bool, True),
            default_project_id=default_project(body),
            password_hash=hash_password(password, bcrypt_cost) if password else None,
            created_at=datetime.now(UTC).replace(tzinfo=None),
        )
        session().add(user)
        _flush_unique("user", name)
        bottle.response.status = 201
        return {"user": views.user_view(base_url(), user)}

    @app.get("/v3/users/<user_id>")
    def show_user(user_id: str) -> dict[str, Any]:
        _enforce("identity:get_user", user_id=user_id)
        return {"user": views.user_view(base_url(), get_or_404(User, user_id, "user"))}

    @app.route("/v3/users/<user_id>", method="PATCH")
    def update_user(user_id: str) -> dict[str, Any]:
        _enforce("identity:update_user")
        user = get_or_404(User, user_id, "user")
        body = field(json_body(), "user", dict)
        if "name" in body:
            user.name = _name(body, "name")
        for text in ("description", "email"):
            if text in body:
                setattr(user, text, field(body, text, str, None))
        if "default_project_id" in body:
            user.default_project_id = default_project(body)
        if "enabled" in body:
            enabled = field(body, "enabled", bool)
            if user.enabled and not enabled:
                revoke(session(), user_id=user.id)
            if enabled:  # Keystone's way to unlock a locked-out user
                lockout.clear(session(), lockout.user_subject(user.id))
            user.enabled = enabled
        if "password" in body:
            user.password_hash = hash_password(_password(body, "password"), bcrypt_cost)
            revoke(session(), user_id=user.id)
            lockout.clear(session(), lockout.user_subject(user.id))
        _flush_unique("user", user.name)
        return {"user": views.user_view(base_url(), user)}

    @app.delete("/v3/users/<user_id>")
    def delete_user(user_id: str) -> None:
        _enforce("identity:delete_user")
        user = get_or_404(User, user_id, "user")
        revoke(session(), user_id=user.id)
        lockout.clear(session(), lockout.user_subject(user.id))
        session().execute(delete(RoleAssignment).where(RoleAssignment.user_id == user.id))
        session().delete(user)

    @app.post("/v3/users/<user_id>/password")
    def change_password(user_id: str) -> None:
        _enforce("identity:change_password", user_id=user_id)
        body = field(json_body(), "user", dict)
        original = _password(body, "original_password")
        new = _password(body, "password")
        user = get_or_404(User, user_id, "user")
        # the original password is a password check like a login's, with its lockout
        source = locks.source(bottle.request.environ)
        locks.check_source(session(), source)
        locks.check_user(session(), user)
        if not verify_password(original, user.password_hash):
            locks.failed(source, user)
            raise Fault("The original password is not correct.", 401)
        locks.succeeded(session(), user)
        user.password_hash = hash_password(new, bcrypt_cost)
        revoke(session(), user_id=user.id)

    @app.get("/v3/users/<user_id>/projects")
    def user_projects(user_id: str) -> dict[str, Any]:
        _enforce("identity:list_user_projects", user_id=user_id)
        ids = select(RoleAssignment.target_id).where(
            RoleAssignment.user_id == user_id, RoleAssignment.target_type == "project")
        rows = session().scalars(select(Project).where(Project.id.in_(ids))).all()
        return views.collection(base_url(), "projects",
                                [views.project_view(base_url(), p) for p in rows])


def register_roles(app: bottle.Bottle) -> None:
    @app.get("/v3/roles")
    def list_roles() -> dict[str, Any]:
        _enforce("identity:list_roles")
        query = select(Role).order_by(Role.name)
        if "name" in bottle.request.query:
            query = query.where(Role.name == bottle.request.query["name"])
        rows = session().scalars(query).all()
        return views.collection(base_url(), "roles", [views.role_view(base_url(), r) for r in rows])

    @app.post("/v3/roles")
    def create_role() -> dict[str, Any]:
        _enforce("identity:create_role")
        body = field(json_body(), "role", dict)
        name = _name(body, "name")
        role = Role(name=name, description=field(body, "description", str, ""))
        session().add(role)
        _flush_unique("role", name)
        bottle.response.status = 201
        return {"role": views.role_view(base_url(), role)}

    @app.get("/v3/roles/<role_id>")
    def show_role(role_id: str) -> dict[str, Any]:
        _enforce("identity:get_role")
        return {"role": views.role_view(base_url(), get_or_404(Role, role_id, "role"))}

    @app.delete("/v3/roles/<role_id>")
    def delete_role(role_id: str) -> None:
        _enforce("identity:delete_role")
        role = get_or_404(Role, role_id, "role")
        if role.name in ("admin", "member", "reader"):
            raise Forbidden(f"The {role.name} role is built in and cannot be deleted.")
        sess = session()
        for user_id, target_id in sess.execute(
                select(RoleAssignment.user_id, RoleAssignment.target_id).where(
                    RoleAssignment.role_id == role.id)).all():
            revoke(sess, user_id=user_id, project_id=target_id)
        sess.execute(delete(RoleAssignment).where(RoleAssignment.role_id == role.id))
        sess.delete(role)


def register_grants(app: bottle.Bottle) -> None:
    targets: dict[str, tuple[type[Project] | type[Domain], str]] = {
        "projects": (Project, "project"),
        "domains": (Domain, "domain"),
    }

    def resolve(kind: str, target_id: str, user_id: str, role_id: str) -> tuple[str, Role]:
        model, target_type = targets[kind]
        get_or_404(model, target_id, target_type)
        get_or_404(User, user_id, "user")
        return target_type, get_or_404(Role, role_id, "role")

    def grant_route(path: str, method: str) -> Callable[[Callable[..., Any]], Any]:
        return app.route(f"/v3/<kind:re:projects|domains>/<target_id>/users/<user_id>{path}",
                         method=method)

    @grant_route("/roles/<role_id>", "PUT")
    def grant(kind: str, target_id: str, user_id: str, role_id: str) -> None:
        _enforce("identity:create_grant")
        target_type, role = resolve(kind, target_id, user_id, role_id)
        key = (user_id, target_type, target_id, role.id)
        if session().get(RoleAssignment, key) is None:
            session().add(RoleAssignment(user_id=user_id, target_type=target_type,
                                         target_id=target_id, role_id=role.id))

    @grant_route("/roles/<role_id>", "HEAD")
    @grant_route("/roles/<role_id>", "GET")
    def check_grant(kind: str, target_id: str, user_id: str, role_id: str) -> None:
        _enforce("identity:check_grant")
        target_type, role = resolve(kind, target_id, user_id, role_id)
        if session().get(RoleAssignment, (user_id, target_type, target_id, role.id)) is None:
            raise NotFound(f"Could not find role assignment of role {role_id} to user "
                           f"{user_id} on {target_type} {target_id}.")

    @grant_route("/roles/<role_id>", "DELETE")
    def revoke_grant(kind: str, target_id: str, user_id: str, role_id: str) -> None:
        _enforce("identity:revoke_grant")
        target_type, role = resolve(kind, target_id, user_id, role_id)
        row = session().get(RoleAssignment, (user_id, target_type, target_id, role.id))
        if row is None:
            raise NotFound(f"Could not find role assignment of role {role_id} to user "
                           f"{user_id} on {target_type} {target_id}.")
        session().delete(row)
        if target_type == "project":
            revoke(session(), user_id=user_id, project_id=target_id)
        else:
            revoke(session(), user_id=user_id)

    @grant_route("/roles", "GET")
    def list_grants(kind: str, target_id: str, user_id: str) -> dict[str, Any]:
        _enforce("identity:list_grants")
        model, target_type = targets[kind]
        get_or_404(model, target_id, target_type)
        rows = session().scalars(
            select(Role).join(RoleAssignment, RoleAssignment.role_id == Role.id).where(
                RoleAssignment.user_id == user_id, RoleAssignment.target_type == target_type,
                RoleAssignment.target_id == target_id)).all()
        return views.collection(base_url(), "roles", [views.role_view(base_url(), r) for r in rows])

    @app.get("/v3/role_assignments")
    def list_assignments() -> dict[str, Any]:
        q = bottle.request.query
        ctx = auth()
        if not policy.allowed(ctx, "identity:list_role_assignments") and (
                q.get("user.id") != ctx.user_id):
            _enforce("identity:list_role_assignments")
        query = select(RoleAssignment)
        filters = {"user.id": RoleAssignment.user_id, "role.id": RoleAssignment.role_id,
                   "scope.project.id": RoleAssignment.target_id,
                   "scope.domain.id": RoleAssignment.target_id}
        for name, column in filters.items():
            if name in q:
                query = query.where(column == q[name])
        if "scope.project.id" in q:
            query = query.where(RoleAssignment.target_type == "project")
        if "scope.domain.id" in q:
            query = query.where(RoleAssignment.target_type == "domain")
        names = "include_names" in q and q["include_names"].lower() not in ("0", "false")
        sess = session()

        def domain_ref(domain_id: str) -> dict[str, Any]:
            d = sess.get(Domain, domain_id)
            return {"id": domain_id, "name": d.name if d else None}

        out = []
        for a in sess.scalars(query).all():
            role: dict[str, Any] = {"id": a.role_id}
            user: dict[str, Any] = {"id": a.user_id}
            target: dict[str, Any] = {"id": a.target_id}
            if names:
                r, u = sess.get(Role, a.role_id), sess.get(User, a.user_id)
                role["name"] = r.name if r else None
                if u is not None:
                    user.update(name=u.name, domain=domain_ref(u.domain_id))
                t: Project | Domain | None = (
                    sess.get(Project, a.target_id) if a.target_type == "project"
                    else sess.get(Domain, a.target_id))
                target["name"] = t.name if t else None
                if isinstance(t, Project):
                    target["domain"] = domain_ref(t.domain_id)
            out.append({
                "role": role,
                "user": user,
                "scope": {a.target_type: target},
                "links": {"assignment": f"{base_url()}/v3/{a.target_type}s/{a.target_id}/users/"
                                        f"{a.user_id}/roles/{a.role_id}"},
            })
        return {"role_assignments": out, "links": {"self": f"{base_url()}/v3/role_assignments",
                                                   "previous": None, "next": None}}


def register_catalog(app: bottle.Bottle) -> None:
    """Read-only: the catalog is owned by configuration (see core.identity.catalog)."""

    def listing(name: str, model: type[Any], view: Callable[[str, Any], dict[str, Any]],
                action: str) -> None:
        def list_all() -> dict[str, Any]:
            _enforce(action)
            query = select(model)
            for key in ("type", "interface", "service_id", "region_id"):
                if key in bottle.request.query and hasattr(model, key):
                    query = query.where(getattr(model, key) == bottle.request.query[key])
            rows = session().scalars(query).all()
            return views.collection(base_url(), name, [view(base_url(), r) for r in rows])

        def show(obj_id: str) -> dict[str, Any]:
            _enforce(action)
            obj = get_or_404(model, obj_id, name[:-1])
            return {name[:-1]: view(base_url(), obj)}

        app.route(f"/v3/{name}", "GET", list_all)
        app.route(f"/v3/{name}/<obj_id>", "GET", show)

    listing("regions", Region, views.region_view, "identity:list_regions")
    listing("services", Service, views.service_view, "identity:list_services")
    listing("endpoints", Endpoint, views.endpoint_view, "identity:list_endpoints")

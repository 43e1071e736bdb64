"""Keystone v3 JSON shapes of Haven's identity objects."""

from __future__ import annotations

from typing import Any

from core.identity.models import Domain, Endpoint, Project, Region, Role, Service, User


def _links(base: str, collection: str, obj_id: str) -> dict[str, str]:
    return {"self": f"{base}/v3/{collection}/{obj_id}"}


def collection(base: str, name: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {name: items, "links": {"self": f"{base}/v3/{name}", "previous": None, "next": None}}


def domain_view(base: str, d: Domain) -> dict[str, Any]:
    return {
        "id": d.id,
        "name": d.name,
        "description": d.description,
        "enabled": d.enabled,
        "tags": [],
        "options": {},
        "links": _links(base, "domains", d.id),
    }


def project_view(base: str, p: Project) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "domain_id": p.domain_id,
        "description": p.description,
        "enabled": p.enabled,
        "parent_id": p.domain_id,
        "is_domain": False,
        "tags": [],
        "options": {},
        "links": _links(base, "projects", p.id),
    }


def user_view(base: str, u: User) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": u.id,
        "name": u.name,
        "domain_id": u.domain_id,
        "enabled": u.enabled,
        "password_expires_at": None,
        "options": {},
        "links": _links(base, "users", u.id),
    }
    if u.description:
        view["description"] = u.description
    if u.email:
        view["email"] = u.email
    if u.default_project_id:
        view["default_project_id"] = u.default_project_id
    return view


def role_view(base: str, r: Role) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "domain_id": None,
        "description": r.description,
        "options": {},
        "links": _links(base, "roles", r.id),
    }


def region_view(base: str, r: Region) -> dict[str, Any]:
    return {
        "id": r.id,
        "description": r.description,
        "parent_region_id": None,
        "links": _links(base, "regions", r.id),
    }


def service_view(base: str, s: Service) -> dict[str, Any]:
    return {
        "id": s.id,
        "type": s.type,
        "name": s.name,
        "description": s.description,
        "enabled": s.enabled,
        "links": _links(base, "services", s.id),
    }


def endpoint_view(base: str, e: Endpoint) -> dict[str, Any]:
    return {
        "id": e.id,
        "service_id": e.service_id,
        "interface": e.interface,
        "region": e.region_id,
        "region_id": e.region_id,
        "url": e.url,
        "enabled": e.enabled,
        "links": _links(base, "endpoints", e.id),
    }

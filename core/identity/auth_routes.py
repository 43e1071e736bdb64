"""Version discovery and the ``/v3/auth`` routes (tokens, catalog, my projects)."""

from __future__ import annotations

from typing import Any

import bottle
from sqlalchemy import select

from core.common import policy
from core.common.auth import revoke
from core.common.faults import BadRequest
from core.common.wsgi import auth, base_url, json_body, session
from core.identity import views
from core.identity.models import Domain, Project, RoleAssignment
from core.identity.tokens import TokenService

API_VERSION = "v3.14"
UPDATED = "2020-04-07T00:00:00Z"


def _version(base: str) -> dict[str, Any]:
    return {
        "id": API_VERSION,
        "status": "stable",
        "updated": UPDATED,
        "links": [{"rel": "self", "href": f"{base}/v3/"}],
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
        ],
    }


def _subject_token() -> str:
    token = bottle.request.get_header("X-Subject-Token")
    if not token:
        raise BadRequest("Missing required header 'X-Subject-Token'.")
    return token


def register(app: bottle.Bottle, tokens: TokenService) -> None:
    @app.get("/", skip_auth=True)
    def versions() -> dict[str, Any]:
        bottle.response.status = 300
        return {"versions": {"values": [_version(base_url())]}}

    @app.get("/v3", skip_auth=True)
    @app.get("/v3/", skip_auth=True)
    def version() -> dict[str, Any]:
        return {"version": _version(base_url())}

    @app.post("/v3/auth/tokens", skip_auth=True)
    def issue_token() -> dict[str, Any]:
        body = json_body()
        source = tokens.lockout.source(bottle.request.environ)
        token, payload = tokens.issue(session(), body, source)
        bottle.response.status = 201
        bottle.response.set_header("X-Subject-Token", token)
        return tokens.body(session(), payload, catalog="nocatalog" not in bottle.request.query)

    @app.get("/v3/auth/tokens")
    def validate_token() -> dict[str, Any]:
        subject = tokens.validate_subject(session(), _subject_token())
        policy.enforce(auth(), "identity:validate_token", {"user_id": subject.user_id})
        bottle.response.set_header("X-Subject-Token", subject.token)
        return tokens.body(session(), subject.payload,
                           catalog="nocatalog" not in bottle.request.query)

    @app.delete("/v3/auth/tokens")
    def revoke_token() -> None:
        subject = tokens.validate_subject(session(), _subject_token())
        policy.enforce(auth(), "identity:revoke_token", {"user_id": subject.user_id})
        revoke(session(), audit_id=subject.payload.audit_id_strings()[0])

    @app.get("/v3/auth/catalog")
    def my_catalog() -> dict[str, Any]:
        return {"catalog": tokens.catalog.get(session()),
                "links": {"self": f"{base_url()}/v3/auth/catalog"}}

    @app.get("/v3/auth/projects")
    def my_projects() -> dict[str, Any]:
        ids = select(RoleAssignment.target_id).where(
            RoleAssignment.user_id == auth().user_id, RoleAssignment.target_type == "project")
        rows = session().scalars(
            select(Project).where(Project.id.in_(ids), Project.enabled.is_(True))
        ).all()
        return views.collection(base_url(), "projects",
                                [views.project_view(base_url(), p) for p in rows])

    @app.get("/v3/auth/domains")
    def my_domains() -> dict[str, Any]:
        ids = select(RoleAssignment.target_id).where(
            RoleAssignment.user_id == auth().user_id, RoleAssignment.target_type == "domain")
        rows = session().scalars(
            select(Domain).where(Domain.id.in_(ids), Domain.enabled.is_(True))
        ).all()
        return views.collection(base_url(), "domains",
                                [views.domain_view(base_url(), d) for d in rows])

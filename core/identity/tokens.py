"""Issuing tokens and rendering the Keystone v3 token body.

Issue: check the credentials (password or an existing token), resolve the
requested scope, compute the caller's roles there (with implied roles), and
seal a payload. Nothing is written. Validate: open the token (the shared auth
code checks expiry and revocation events) and render the same body from
current names and the catalog.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.common.auth import AuthContext, TokenValidator, Unauthorized
from core.common.faults import BadRequest, Fault, NotFound
from core.common.tokens import TokenCodec, TokenPayload, isoformat_us, new_audit_id, now_us
from core.common.wsgi import field
from core.identity.catalog import CatalogCache
from core.identity.lockout import Lockout
from core.identity.lookups import DomainRec, Lookups, UserRec, user_rec
from core.identity.models import Domain, User
from core.identity.passwords import MAX_PASSWORD_BYTES, verify_password

AUTH_FAILED = "The request you have made requires authentication."


def unauthorized(message: str = AUTH_FAILED) -> Fault:
    return Fault(message, 401)


class TokenService:
    """Issues and renders tokens for the identity API."""

    def __init__(self, codec: TokenCodec, validator: TokenValidator, lifetime_s: int,
                 lockout: Lockout) -> None:
        self.codec = codec
        self.lockout = lockout
        self.validator = validator
        self.lifetime_us = lifetime_s * 1_000_000
        self.catalog = CatalogCache()
        self.lookups = Lookups(validator.revocations)

    def _domain(self, session: Session, ref: Mapping[str, Any], path: str) -> DomainRec:
        if "id" in ref:
            domain = self.lookups.domain(session, field(ref, "id", str))
        elif "name" in ref:
            domain = self.lookups.domain_by_name(session, field(ref, "name", str))
        else:
            raise BadRequest(f"Missing required field '{path}.id' or '{path}.name'.")
        if domain is None:
            raise unauthorized()
        return domain

    # ---- issue -------------------------------------------------------------------
    def issue(self, session: Session, body: Mapping[str, Any], source: str
              ) -> tuple[str, TokenPayload]:
        """A token for ``body``'s credentials; ``source`` is the client's address, for
        the per-address lockout of password authentication."""
        identity = field(body, "auth.identity", dict)
        methods = field(identity, "methods", list)
        if not methods or not all(isinstance(m, str) for m in methods):
            raise BadRequest("Invalid input for field 'auth.identity.methods': "
                             "expected a non-empty array of strings.")
        if len(methods) != 1 or methods[0] not in ("password", "token"):
            raise Fault(f"Unsupported authentication method(s): {', '.join(methods)}.", 401)
        self.validator.revocations.sync(session)  # fresh caches for this decision
        now = now_us()
        if methods[0] == "password":
            user = self._password_user(session, field(identity, "password.user", dict), source)
            expires_at = now + self.lifetime_us
            audit_ids: tuple[bytes, ...] = (new_audit_id(),)
        else:
            original = self._token_auth(session, field(identity, "token.id", str))
            token_user = self.lookups.user(session, original.user_id)
            if token_user is None or not token_user.enabled:
                raise unauthorized()
            user = token_user
            expires_at = original.expires_at  # a re-scoped token never outlives its parent
            audit_ids = (new_audit_id(), original.audit_ids[-1])
        project_id, domain_id, roles = self._scope(session, user, body)
        payload = TokenPayload(
            user_id=user.id,
            methods=(methods[0],),
            issued_at=now,
            expires_at=expires_at,
            audit_ids=audit_ids,
            roles=tuple(sorted(roles)),
            project_id=project_id,
            domain_id=domain_id,
        )
        return self.codec.seal(payload), payload

    def _password_user(self, session: Session, ref: Mapping[str, Any], source: str
                       ) -> UserRec:
        password = field(ref, "password", str)
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            raise BadRequest("Invalid input for field 'auth.identity.password.user.password': "
                             f"longer than {MAX_PASSWORD_BYTES} bytes.")
        self.lockout.check_source(session, source)
        user: User | None
        if "id" in ref:
            user = session.get(User, field(ref, "id", str))
        else:
            name = field(ref, "name", str)
            domain_ref = field(ref, "domain", dict)
            try:
                domain = self._domain(session, domain_ref, "auth.identity.password.user.domain")
            except Fault:
                verify_password(password, None)  # same cost as a real check
                self.lockout.failed(source, None)
                raise
            user = session.scalars(
                select(User).where(User.domain_id == domain.id, User.name == name)
            ).first()
        if user is not None:
            self.lockout.check_user(session, user)
        if not verify_password(password, user.password_hash if user else None):
            self.lockout.failed(source, user)
            raise unauthorized()
        assert user is not None
        self.lockout.succeeded(session, user)
        user_domain = session.get(Domain, user.domain_id)
        if not user.enabled or user_domain is None or not user_domain.enabled:
            raise unauthorized()
        return user_rec(user)

    def _token_auth(self, session: Session, token: str) -> TokenPayload:
        try:
            return self.validator.validate(session, token).payload
        except Unauthorized:
            raise unauthorized() from None

    def _scope(
        self, session: Session, user: UserRec, body: Mapping[str, Any]
    ) -> tuple[str | None, str | None, frozenset[str]]:
        scope: dict[str, Any] | str | None = field(body, "auth.scope", (dict, str), default=None)
        lookups = self.lookups
        if scope is None:
            if user.default_project_id:
                project = lookups.project(session, user.default_project_id)
                if project is not None and project.enabled:
                    roles = lookups.roles(session, user.id, "project", project.id)
                    if roles:
                        return project.id, None, roles
            return None, None, frozenset()
        if isinstance(scope, str) or "system" in scope:
            raise BadRequest("System scope is not supported by Haven; scope to a project.")
        if "project" in scope:
            ref = field(scope, "project", dict)
            if "id" in ref:
                project = lookups.project(session, field(ref, "id", str))
            else:
                name = field(ref, "name", str)
                domain = self._domain(session, field(ref, "domain", dict),
                                      "auth.scope.project.domain")
                project = lookups.project_by_name(session, domain.id, name)
            if project is None or not project.enabled:
                raise unauthorized()
            pdomain = lookups.domain(session, project.domain_id)
            if pdomain is None or not pdomain.enabled:
                raise unauthorized()
            roles = lookups.roles(session, user.id, "project", project.id)
            if not roles:
                raise unauthorized(f"User {user.id} has no access to project {project.id}")
            return project.id, None, roles
        if "domain" in scope:
            domain = self._domain(session, field(scope, "domain", dict), "auth.scope.domain")
            roles = lookups.roles(session, user.id, "domain", domain.id)
            if not roles or not domain.enabled:
                raise unauthorized(f"User {user.id} has no access to domain {domain.id}")
            return None, domain.id, roles
        raise BadRequest("Invalid input for field 'auth.scope': expected 'project' or 'domain'.")

    # ---- render --------------------------------------------------------------------
    def validate_subject(self, session: Session, token: str) -> AuthContext:
        try:
            return self.validator.validate(session, token)
        except Unauthorized as exc:
            raise NotFound(f"Failed to validate token: {exc}") from None

    def body(self, session: Session, payload: TokenPayload, catalog: bool = True
             ) -> dict[str, Any]:
        """The Keystone token body for ``payload`` (cached like the lookups it is made of)."""
        key = ("body", payload.audit_ids[0], payload.issued_at, catalog)
        body = self.lookups.cached(key, lambda: self._render(session, payload, catalog))
        assert body is not None
        return body

    def _render(self, session: Session, payload: TokenPayload, catalog: bool) -> dict[str, Any]:
        lookups = self.lookups
        user = lookups.user(session, payload.user_id)
        if user is None:
            raise NotFound("Could not find token: its user no longer exists.")

        def domain_ref(domain_id: str) -> dict[str, str]:
            d = lookups.domain(session, domain_id)
            return {"id": domain_id, "name": d.name if d else domain_id}

        token: dict[str, Any] = {
            "methods": list(payload.methods),
            "user": {
                "id": user.id,
                "name": user.name,
                "domain": domain_ref(user.domain_id),
                "password_expires_at": None,
            },
            "audit_ids": payload.audit_id_strings(),
            "expires_at": isoformat_us(payload.expires_at),
            "issued_at": isoformat_us(payload.issued_at),
        }
        if payload.project_id is not None:
            project = lookups.project(session, payload.project_id)
            if project is None:
                raise NotFound("Could not find token: its project no longer exists.")
            token["project"] = {"id": project.id, "name": project.name,
                                "domain": domain_ref(project.domain_id)}
            token["is_domain"] = False
        elif payload.domain_id is not None:
            token["domain"] = domain_ref(payload.domain_id)
        if payload.roles:
            ids = lookups.role_ids(session)
            token["roles"] = [{"id": ids.get(name, name), "name": name} for name in payload.roles]
        if catalog and payload.scope_type != 0:
            token["catalog"] = self.catalog.get(session)
        return {"token": token}

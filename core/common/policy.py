"""Who may do what: one rule per API action, decided from the auth context.

Rules are plain functions so they read like the policy they encode and can be
unit-tested alone. Roles imply each other as in Keystone (admin > member >
reader), and tokens already carry the implied roles. A rule sees the caller
and, where it matters, the target's owning project or user.

Reading the rules: ``admin`` is a cloud administrator (the admin role in any
project, as in Keystone's default "admin_required"); ``reader`` and ``member``
apply within the caller's own project.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from core.common.auth import AuthContext
from core.common.faults import Forbidden

Rule = Callable[[AuthContext, Mapping[str, Any]], bool]
RULES: dict[str, Rule] = {}


def admin(ctx: AuthContext, _target: Mapping[str, Any]) -> bool:
    return "admin" in ctx.roles


def reader_of_project(ctx: AuthContext, target: Mapping[str, Any]) -> bool:
    return "reader" in ctx.roles and ctx.project_id is not None and (
        ctx.project_id == target.get("project_id")
    )


def member_of_project(ctx: AuthContext, target: Mapping[str, Any]) -> bool:
    return "member" in ctx.roles and ctx.project_id is not None and (
        ctx.project_id == target.get("project_id")
    )


def owner(ctx: AuthContext, target: Mapping[str, Any]) -> bool:
    return ctx.user_id == target.get("user_id")


def any_of(*rules: Rule) -> Rule:
    def rule(ctx: AuthContext, target: Mapping[str, Any]) -> bool:
        return any(r(ctx, target) for r in rules)

    return rule


def register(rules: Mapping[str, Rule]) -> None:
    """Add a service's rules; a name defined twice is a bug."""
    for name, rule in rules.items():
        if name in RULES and RULES[name] is not rule:
            raise ValueError(f"policy rule {name} defined twice")
        RULES[name] = rule


def allowed(ctx: AuthContext, action: str, target: Mapping[str, Any] | None = None) -> bool:
    try:
        rule = RULES[action]
    except KeyError:
        raise LookupError(f"no policy rule for {action}") from None  # a bug: fail closed
    return rule(ctx, target or {})


def enforce(ctx: AuthContext, action: str, target: Mapping[str, Any] | None = None) -> None:
    """Raise 403 unless ``ctx`` may perform ``action`` on ``target``."""
    if not allowed(ctx, action, target):
        raise Forbidden(f"You are not authorized to perform the requested action: {action}.")

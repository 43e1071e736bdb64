"""The identity API's policy: Keystone's defaults, reduced to Haven's three roles.

Administration (domains, projects, users, roles, grants, catalog) needs the
admin role. Anyone may look at their own user, their current project, their own
tokens, and change their own password.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.common.auth import AuthContext
from core.common.policy import Rule, admin, any_of, owner, reader_of_project


def _own_domain(ctx: AuthContext, target: Mapping[str, Any]) -> bool:
    return ctx.domain_id is not None and ctx.domain_id == target.get("domain_id")


RULES: dict[str, Rule] = {
    "identity:validate_token": any_of(admin, owner),
    "identity:revoke_token": any_of(admin, owner),
    "identity:list_domains": admin,
    "identity:create_domain": admin,
    "identity:get_domain": any_of(admin, _own_domain),
    "identity:update_domain": admin,
    "identity:delete_domain": admin,
    "identity:list_projects": admin,
    "identity:create_project": admin,
    "identity:get_project": any_of(admin, reader_of_project),
    "identity:update_project": admin,
    "identity:delete_project": admin,
    "identity:list_users": admin,
    "identity:create_user": admin,
    "identity:get_user": any_of(admin, owner),
    "identity:update_user": admin,
    "identity:delete_user": admin,
    "identity:change_password": owner,
    "identity:list_user_projects": any_of(admin, owner),
    "identity:list_roles": admin,
    "identity:create_role": admin,
    "identity:get_role": admin,
    "identity:delete_role": admin,
    "identity:create_grant": admin,
    "identity:check_grant": admin,
    "identity:revoke_grant": admin,
    "identity:list_grants": admin,
    "identity:list_role_assignments": admin,
    "identity:list_regions": lambda ctx, _t: True,
    "identity:list_services": admin,
    "identity:list_endpoints": admin,
}

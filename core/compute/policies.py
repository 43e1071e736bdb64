"""The compute API's policy (Nova's defaults, on Haven's three roles).

Servers belong to a project: its members act on them, its readers see them,
and to everyone else they do not exist (404, never 403, so ids of other
projects' servers leak nothing). Hypervisors, services, evacuation, flavor
management and cross-project listing are for administrators.
"""

from __future__ import annotations

from core.common.policy import Rule, admin, any_of, member_of_project, reader_of_project

RULES: dict[str, Rule] = {
    "compute:servers:read": any_of(admin, reader_of_project),
    "compute:servers:write": any_of(admin, member_of_project),
    "compute:servers:create": lambda ctx, _t: "member" in ctx.roles and ctx.project_id is not None,
    "compute:servers:all_tenants": admin,
    # Nova's os_compute_api:os-security-groups:list (GET /servers/{id}/os-security-groups)
    "compute:servers:security_groups": any_of(admin, reader_of_project),
    "compute:evacuate": admin,
    "compute:flavors:manage": admin,
    "compute:flavors:private": admin,  # see and boot flavors that are not public
    "compute:servers:metadata:admin_keys": admin,  # ha:priority (metadata_rules.py)
    "compute:hypervisors": admin,
    "compute:services": admin,
    "compute:server_groups:create": lambda ctx, _t: "member" in ctx.roles,
    "compute:server_groups:read": any_of(admin, reader_of_project),
    "compute:server_groups:write": any_of(admin, member_of_project),
}

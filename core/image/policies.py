"""The image API's policy (Glance's defaults, on Haven's three roles).

An image belongs to its owner project: that project's readers see and
download it, its members create, change, upload and delete it. ``public``
and ``community`` images are seen by every project-scoped caller; making an
image ``public`` is for administrators (Glance's ``publicize_image``), making
it ``community`` for the owner's members (``communitize_image``). Changing
another project's image, or an image's owner, is for administrators. A token
without a project (unscoped, domain-scoped) never writes: an image must have
an owning project.
"""

from __future__ import annotations

from core.common.auth import AuthContext
from core.common.policy import Rule, admin, any_of, member_of_project, reader_of_project


def project_member(ctx: AuthContext, _target: object) -> bool:
    """A member of some project, creating there (the target is the caller's own)."""
    return "member" in ctx.roles and ctx.project_id is not None


def project_scoped(ctx: AuthContext, _target: object) -> bool:
    return ctx.project_id is not None or "admin" in ctx.roles


RULES: dict[str, Rule] = {
    "image:read": any_of(admin, reader_of_project),
    "image:read_shared": project_scoped,  # public and community images
    "image:create": project_member,
    "image:write": any_of(admin, member_of_project),
    "image:publicize": admin,
    "image:communitize": any_of(admin, member_of_project),
    "image:set_owner": admin,
}

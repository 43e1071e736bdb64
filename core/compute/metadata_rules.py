"""What a server's metadata may hold, and who may set which keys.

* At most 128 items per server, on every path that adds one (create, the
  whole-set POST/PUT and the per-item PUT), answered as Nova does: 403
  "Maximum number of metadata items exceeds 128".
* ``ha:priority`` orders evacuations when capacity is short (the evacuation
  controller starts higher priorities first), so a tenant that could set it
  would jump the queue ahead of everyone else's servers. It is an
  administrator's key: anyone else changing it (setting, changing or removing
  it, on create or later) gets a 403. Tenants keep ``ha:enabled`` (opting their
  own server out of evacuation harms nobody else).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.common import policy
from core.common.auth import AuthContext
from core.common.faults import BadRequest, Forbidden

MAX_METADATA = 128
ADMIN_KEYS = ("ha:priority",)


def check_metadata(meta: Any, path: str = "metadata") -> dict[str, str]:
    """The request's metadata object, its keys and values checked (400) and counted (403)."""
    if not isinstance(meta, dict):
        raise BadRequest(f"Invalid input for field '{path}': expected an object.")
    for key, value in meta.items():
        if not isinstance(value, str) or not key or len(key) > 255 or len(value) > 255:
            raise BadRequest(f"Invalid input for field '{path}.{key}': keys and values must "
                             "be strings of 1 to 255 characters.")
    check_count(len(meta))
    return dict(meta)


def check_count(count: int) -> None:
    if count > MAX_METADATA:
        raise Forbidden(f"Maximum number of metadata items exceeds {MAX_METADATA}")


def check_admin_keys(ctx: AuthContext, before: Mapping[str, str],
                     after: Mapping[str, str]) -> None:
    """403 unless the caller may change every admin-only key that would change."""
    changed = [k for k in ADMIN_KEYS if before.get(k) != after.get(k)]
    if changed and not policy.allowed(ctx, "compute:servers:metadata:admin_keys"):
        raise Forbidden(f"Only an administrator can set or remove metadata "
                        f"{', '.join(changed)}.")

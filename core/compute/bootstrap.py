"""Default flavors, created once (idempotent) by bootstrap."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.compute.models import Flavor

# Sized for the tiny test guest (it needs ~220 MB of RAM); names as in Nova.
DEFAULT_FLAVORS = (
    ("1", "m1.tiny", 1, 256, 1),
    ("2", "m1.small", 1, 512, 2),
    ("3", "m1.medium", 2, 1024, 4),
)


def ensure_flavors(session: Session) -> None:
    for flavor_id, name, vcpus, ram, disk in DEFAULT_FLAVORS:
        if session.get(Flavor, flavor_id) is None and session.scalars(
                select(Flavor).where(Flavor.name == name)).first() is None:
            session.add(Flavor(id=flavor_id, name=name, vcpus=vcpus, ram_mb=ram, disk_gb=disk,
                               is_public=True, deleted=False))

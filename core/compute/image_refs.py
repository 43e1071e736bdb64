"""The image a server is built from, as the image service shows it to the caller.

Asked with the caller's own token (as Nova asks Glance), so a server can be built
only from an image its owner may read; compute never imports the image service.
"""

from __future__ import annotations

import re
from typing import Any

from core.common.clients import ServiceCallError, ServiceClients
from core.common.faults import BadRequest, Fault

UUID_RE = re.compile(r"^[0-9a-fA-F-]{32,36}$")


def resolve_image(clients: ServiceClients, token: str, ref: str) -> dict[str, Any]:
    """The active image ``ref`` (an id or a URL ending in one) names; 400 if there is
    none the caller sees or it is not active, 503 if the image service fails."""
    image_id = ref.rstrip("/").rsplit("/", 1)[-1]
    if not UUID_RE.match(image_id):
        raise BadRequest(f"Invalid imageRef provided: {ref}.")
    try:
        image = clients.request("GET", "image", f"/v2/images/{image_id}", token=token).json()
    except ServiceCallError as exc:
        if exc.status == 404:
            raise BadRequest(f"Image {image_id} could not be found.") from None
        raise Fault(f"Image service error: {exc}", 503) from None
    if image.get("status") != "active":
        raise BadRequest(f"Image {image_id} is not active.")
    return dict(image)


def disk_needed_gb(image: dict[str, Any]) -> int:
    """The root disk the image needs: its min_disk, or its virtual size rounded up."""
    return max(int(image.get("min_disk") or 0),
               -(-int(image.get("virtual_size") or 0) // (1 << 30)))

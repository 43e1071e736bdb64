"""Image tags (``/v2/images/<id>/tags/<tag>``)."""

from __future__ import annotations

import bottle

from core.common.faults import NotFound
from core.common.wsgi import session
from core.image.images import load, may_modify
from core.image.models import ImageTag


def register(app: bottle.Bottle) -> None:
    @app.route("/v2/images/<image_id>/tags/<tag>", method="PUT")
    def add_tag(image_id: str, tag: str) -> None:
        img = load(image_id)
        may_modify(img)
        session().merge(ImageTag(image_id=img.id, value=tag))

    @app.route("/v2/images/<image_id>/tags/<tag>", method="DELETE")
    def delete_tag(image_id: str, tag: str) -> None:
        img = load(image_id)
        may_modify(img)
        row = session().get(ImageTag, (img.id, tag))
        if row is None:
            raise NotFound(f"Tag {tag} not found")
        session().delete(row)

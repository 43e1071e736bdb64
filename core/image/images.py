"""Image records (Glance v2 ``/v2/images``): list, create, show, patch, delete.

Who sees an image: its project's readers, everyone for a public or community one
(core/image/policies.py); who changes it: its project's members and admins. An
image's formats change only while it is ``queued`` (:func:`set_format`), so the
data checked at upload (:mod:`core.image.data`) is what QEMU will be told.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import bottle
from sqlalchemy import false, or_, select, update

from core.common import policy
from core.common.config import ApiConfig
from core.common.db import rowcount
from core.common.faults import BadRequest, Conflict, Forbidden, NotFound
from core.common.paging import paginate
from core.common.quota import Quotas
from core.common.timeutil import iso, now
from core.common.wsgi import auth, field, json_body, session
from core.image import quotas as image_quotas
from core.image.models import (
    CONTAINER_FORMATS,
    DISK_FORMATS,
    VISIBILITIES,
    Image,
    ImageProperty,
    ImageTag,
)
from core.image.store import ImageStore

CORE_FIELDS = {"id", "name", "status", "visibility", "protected", "owner", "disk_format",
               "container_format", "size", "virtual_size", "checksum", "os_hash_algo",
               "os_hash_value", "min_disk", "min_ram", "created_at", "updated_at", "tags",
               "self", "file", "schema", "os_hidden", "locations", "direct_url"}
READ_ONLY = {"id", "status", "size", "virtual_size", "checksum", "os_hash_algo",
             "os_hash_value", "created_at", "updated_at", "self", "file", "schema",
             "locations", "direct_url"}

FORMAT_FIELDS = ("disk_format", "container_format")


def image_view(img: Image, props: dict[str, str], tags: list[str]) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": img.id, "name": img.name, "status": img.status, "visibility": img.visibility,
        "protected": img.protected, "owner": img.owner, "disk_format": img.disk_format,
        "container_format": img.container_format, "size": img.size,
        "virtual_size": img.virtual_size, "checksum": img.checksum,
        "os_hash_algo": img.os_hash_algo, "os_hash_value": img.os_hash_value,
        "min_disk": img.min_disk, "min_ram": img.min_ram, "os_hidden": False,
        "created_at": iso(img.created_at), "updated_at": iso(img.updated_at), "tags": tags,
        "self": f"/v2/images/{img.id}", "file": f"/v2/images/{img.id}/file",
        "schema": "/v2/schemas/image",
    }
    view.update(props)
    return view


def target(img: Image) -> dict[str, Any]:
    return {"project_id": img.owner}

def visible(img: Image) -> bool:
    ctx = auth()
    if img.visibility in ("public", "community") and policy.allowed(
            ctx, "image:read_shared"):
        return True
    return policy.allowed(ctx, "image:read", target(img))

def load(image_id: str) -> Image:
    img = session().get(Image, image_id)
    if img is None or img.status == "deleted" or not visible(img):
        raise NotFound(f"No image found with ID {image_id}")
    return img

def render(img: Image) -> dict[str, Any]:
    s = session()
    props = {p.name: p.value for p in s.scalars(
        select(ImageProperty).where(ImageProperty.image_id == img.id))}
    tags = list(s.scalars(select(ImageTag.value).where(ImageTag.image_id == img.id)))
    return image_view(img, props, tags)

def may_modify(img: Image) -> None:
    if not policy.allowed(auth(), "image:write", target(img)):
        raise Forbidden("You are not permitted to modify this image.")

def set_format(img: Image, key: str, value: Any) -> None:
    """Change a format only while no data has arrived (Glance's rule), atomically.

    The UPDATE is conditional on ``queued``: an upload that claimed the
    image a moment after this request read it makes it match no row,
    so the format it checks the data against cannot change under it.
    """
    allowed = DISK_FORMATS if key == "disk_format" else CONTAINER_FORMATS
    if value not in allowed:
        raise BadRequest(f"Invalid input for field '{key}': {value!r} "
                         f"(supported: {', '.join(allowed)})")
    changed = rowcount(session().execute(
        update(Image).where(Image.id == img.id, Image.status == "queued")
        .values({key: value, "updated_at": now()})))
    if img.status != "queued" or changed != 1:
        raise Forbidden(f"Attribute {key} can be only replaced for a queued image.")

def set_attr(img: Image, key: str, value: Any) -> None:
    if key in READ_ONLY:
        raise Forbidden(f"Attribute '{key}' is read-only.")
    if key == "visibility":
        if value not in VISIBILITIES:
            raise BadRequest(f"Invalid input for field 'visibility': {value!r}")
        if value == "public" and not policy.allowed(auth(), "image:publicize"):
            raise Forbidden("Only an administrator can make an image public.")
        if value == "community" and not policy.allowed(auth(), "image:communitize",
                                                       target(img)):
            raise Forbidden("You are not permitted to make this image community.")
    elif key in FORMAT_FIELDS:
        set_format(img, key, value)
    elif key in ("min_disk", "min_ram"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRequest(f"Invalid input for field '{key}': expected a non-negative "
                             "integer.")
    elif key == "protected":
        if not isinstance(value, bool):
            raise BadRequest("Invalid input for field 'protected': expected boolean.")
    elif key == "name":
        if value is not None and (not isinstance(value, str) or len(value) > 255):
            raise BadRequest("Invalid input for field 'name': a string up to 255.")
    elif key == "owner" and not policy.allowed(auth(), "image:set_owner"):
        raise Forbidden("Only an administrator can change the owner.")
    if key in CORE_FIELDS:
        setattr(img, key, value)
        return
    if not isinstance(value, str) or len(key) > 255:
        raise BadRequest(f"Invalid input for property '{key}': values must be strings.")
    prop = session().get(ImageProperty, (img.id, key))
    if prop is None:
        session().add(ImageProperty(image_id=img.id, name=key, value=value))
    else:
        prop.value = value


def register(app: bottle.Bottle, api: ApiConfig, quotas: Quotas,
             store: ImageStore) -> None:
    @app.get("/v2/images")
    def list_images() -> dict[str, Any]:
        q = bottle.request.query
        ctx = auth()
        query = select(Image).where(Image.status != "deleted").order_by(Image.created_at.desc())
        if not ctx.is_admin:
            shared = (Image.visibility.in_(("public", "community"))
                      if policy.allowed(ctx, "image:read_shared") else false())
            own = (Image.owner == ctx.project_id
                   if policy.allowed(ctx, "image:read", {"project_id": ctx.project_id})
                   else false())
            query = query.where(or_(shared, own))
        for key in ("name", "status", "visibility", "owner", "disk_format"):
            if key in q:
                query = query.where(getattr(Image, key) == q[key])
        rows = list(session().scalars(query.order_by(Image.id)))
        page, limit = paginate(rows, [i.id for i in rows], q, api.max_limit)
        body = {"images": [render(i) for i in page], "first": "/v2/images",
                "schema": "/v2/schemas/images"}
        if limit and len(page) == limit:  # Glance's "next": the rest is one link away
            params = {**{k: q[k] for k in q if k not in ("limit", "marker")},
                      "marker": page[-1].id, "limit": limit}
            body["next"] = f"/v2/images?{urlencode(params)}"
        return body

    @app.post("/v2/images")
    def create_image() -> dict[str, Any]:
        body = json_body()
        policy.enforce(auth(), "image:create")
        ts = now()
        img = Image(status="queued", owner=auth().project_id, visibility="shared",
                    protected=False, min_disk=0, min_ram=0, created_at=ts, updated_at=ts)
        if "id" in body:
            img.id = field(body, "id", str)
            if session().get(Image, img.id) is not None:
                raise Conflict(f"Image with identifier {img.id} already exists!")
        image_quotas.enforce_image(quotas, session(), img.owner)
        session().add(img)
        session().flush()
        for key, value in body.items():
            if key in ("id", "tags"):
                continue
            set_attr(img, key, value)
        for tag in field(body, "tags", list, []):
            if not isinstance(tag, str):
                raise BadRequest("Invalid input for field 'tags': strings only.")
            session().merge(ImageTag(image_id=img.id, value=tag))
        bottle.response.status = 201
        session().flush()
        return render(img)

    @app.get("/v2/images/<image_id>")
    def show_image(image_id: str) -> dict[str, Any]:
        return render(load(image_id))

    @app.route("/v2/images/<image_id>", method="PATCH")
    def patch_image(image_id: str) -> dict[str, Any]:
        img = load(image_id)
        may_modify(img)
        try:
            ops = json.loads(bottle.request.body.read())
        except ValueError as exc:
            raise BadRequest(f"Malformed JSON in request body: {exc}") from None
        if not isinstance(ops, list):
            raise BadRequest("Request body must be a JSON array of patch operations.")
        for i, op in enumerate(ops):
            if not isinstance(op, dict):
                raise BadRequest(f"Patch operation {i} must be an object.")
            kind = field(op, "op", str)
            path = field(op, "path", str).lstrip("/")
            if kind in ("add", "replace"):
                if path == "tags":
                    session().query(ImageTag).filter(ImageTag.image_id == img.id).delete()
                    for tag in field(op, "value", list):
                        session().merge(ImageTag(image_id=img.id, value=str(tag)))
                else:
                    set_attr(img, path, op.get("value"))
            elif kind == "remove":
                if path in CORE_FIELDS:
                    raise Forbidden(f"Attribute '{path}' cannot be removed.")
                prop = session().get(ImageProperty, (img.id, path))
                if prop is None:
                    raise Conflict(f"Property {path} does not exist.")
                session().delete(prop)
            else:
                raise BadRequest(f"Invalid input for field 'op': {kind!r}")
        img.updated_at = now()
        session().flush()
        return render(img)

    @app.delete("/v2/images/<image_id>")
    def delete_image(image_id: str) -> None:
        img = load(image_id)
        may_modify(img)
        if img.protected:
            raise Forbidden(f"Image {image_id} is protected and cannot be deleted.")
        img.status = "deleted"
        img.updated_at = now()
        store.delete(img.id)

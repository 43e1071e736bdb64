"""The image API (Glance v2 subset) and its app factory.

Upload path: the image row is claimed ``queued -> saving`` with one
compare-and-swap UPDATE that also pins the declared disk and container
formats (two concurrent uploads cannot both write, and a format changed after
the upload read it makes the claim fail), the body is streamed to a temporary
file in the store while its size and hashes are computed, the data is checked
against the pinned format (formats.py), then renamed into place and the row
set ``saving -> active`` by a second compare-and-swap on the same format. The
formats themselves change only by an UPDATE conditional on ``queued``, so once
data arrives they are fixed: what was checked is what QEMU will be told.
Any failure leaves the row ``queued`` and no partial data behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import bottle
from sqlalchemy import false, or_, select, update

from core.common import policy
from core.common.auth import TokenValidator
from core.common.config import HavenConfig
from core.common.db import Database, rowcount
from core.common.faults import BadRequest, Conflict, Fault, Forbidden, NotFound, TooLarge
from core.common.health import add_healthcheck
from core.common.paging import paginate
from core.common.private import open_private, private_dir
from core.common.timeutil import iso, now
from core.common.tokens import KeyRepository, TokenCodec
from core.common.wsgi import (
    auth,
    base_url,
    commit,
    field,
    json_body,
    make_app,
    request_stream,
    session,
)
from core.image import quotas as image_quotas
from core.image.formats import ImageFormatError, inspect
from core.image.models import (
    CONTAINER_FORMATS,
    DISK_FORMATS,
    VISIBILITIES,
    Image,
    ImageProperty,
    ImageTag,
)
from core.image.policies import RULES

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


class ImageStore:
    """Image data as files ``<id>`` in one directory (shared storage in a cluster)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        private_dir(directory)

    def path(self, image_id: str) -> Path:
        return self.directory / image_id

    def delete(self, image_id: str) -> None:
        self.path(image_id).unlink(missing_ok=True)


def create_app(cfg: HavenConfig, db: Database) -> bottle.Bottle:
    policy.register(RULES)
    validator = TokenValidator(TokenCodec(KeyRepository(cfg.fernet_key_dir,
                                                        cfg.identity.max_active_keys)))
    store = ImageStore(cfg.image_store_path)
    max_bytes = cfg.image.max_image_size_gb << 30
    quotas = image_quotas.make_quotas(cfg.quota)
    app = make_app(db, validator, style="nova")

    def store_writable() -> None:
        if not os.access(store.directory, os.W_OK):
            raise OSError(f"image store {store.directory} is not writable")

    add_healthcheck(app, "image", {"database": db.ping, "bus": None, "store": store_writable})

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

    @app.get("/", skip_auth=True)
    def versions() -> dict[str, Any]:
        bottle.response.status = 300
        return {"versions": [{"id": "v2.16", "status": "CURRENT",
                              "links": [{"rel": "self", "href": f"{base_url()}/v2/"}]}]}

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
        page, limit = paginate(rows, [i.id for i in rows], q, cfg.api.max_limit)
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

    @app.route("/v2/images/<image_id>/file", method="PUT", raw_body=True)
    def upload(image_id: str) -> None:
        img = load(image_id)
        may_modify(img)
        disk_format, container_format = img.disk_format, img.container_format
        if not disk_format or not container_format:
            raise BadRequest("Set disk_format and container_format before uploading data.")
        pinned = (Image.id == img.id, Image.disk_format == disk_format,
                  Image.container_format == container_format)
        room = image_quotas.room_bytes(quotas, session(), img.owner)
        claimed = rowcount(session().execute(
            update(Image).where(*pinned, Image.status == "queued")
            .values(status="saving", updated_at=now())))
        if claimed != 1:
            if img.status == "queued":
                raise Conflict(f"Image {image_id} changed while the upload started; "
                               "read it again and retry.")
            raise Conflict(f"Image {image_id} is {img.status}: data can be uploaded only once.")
        commit()  # other requests must see 'saving' while the data streams in
        final = store.path(img.id)
        part = final.with_suffix(".part")
        try:
            size, md5, sha512 = _receive(bottle.request.environ, part,
                                         max_bytes if room is None else min(max_bytes, room))
            info = inspect(part, disk_format)
            image_quotas.enforce_size(quotas, session(), img.owner, size)
            os.replace(part, final)
        except (ImageFormatError, TooLarge, BadRequest) as exc:
            part.unlink(missing_ok=True)
            _reset(db, img.id)
            if isinstance(exc, ImageFormatError):
                raise BadRequest(f"Image data rejected: {exc}") from None
            raise
        except BaseException:
            part.unlink(missing_ok=True)
            _reset(db, img.id)
            raise
        activated = rowcount(session().execute(
            update(Image).where(*pinned, Image.status == "saving")
            .values(status="active", size=size, checksum=md5, os_hash_algo="sha512",
                    os_hash_value=sha512, virtual_size=info.virtual_size, updated_at=now())))
        if activated != 1:  # deleted (or, were it possible, changed) while saving
            final.unlink(missing_ok=True)
            _reset(db, img.id)
            raise Conflict(f"Image {image_id} changed while its data was uploaded; "
                           "the data was discarded.")

    @app.get("/v2/images/<image_id>/file")
    def download(image_id: str) -> Any:
        img = load(image_id)
        if img.status != "active":
            bottle.response.status = 204
            return b""
        path = store.path(img.id)
        if not path.exists():
            raise Fault(f"Image {image_id} data is missing from the store.", 503)
        bottle.response.content_type = "application/octet-stream"
        bottle.response.set_header("Content-Length", str(path.stat().st_size))
        if img.checksum:
            bottle.response.set_header("Content-MD5", img.checksum)
        return _stream(path)

    return app


def _reset(db: Database, image_id: str) -> None:
    def unit(s: Any) -> None:
        s.execute(update(Image).where(Image.id == image_id, Image.status == "saving")
                  .values(status="queued", updated_at=now()))

    db.run_in_transaction(unit)


def _receive(environ: dict[str, Any], part: Path, max_bytes: int) -> tuple[int, str, str]:
    stream = request_stream(max_bytes, "Image")  # bounded: 413 once over, never read past
    length = environ.get("CONTENT_LENGTH")
    remaining = int(length) if length else None
    if remaining is not None and remaining > max_bytes:
        raise TooLarge(f"Image data larger than the {max_bytes} bytes allowed (the size "
                       "limit, or what is left of the project's image_size_total quota).")
    chunked = environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"
    if remaining is None and not chunked:
        raise BadRequest("Upload needs a Content-Length or chunked transfer encoding.")
    md5, sha512, size = hashlib.md5(usedforsecurity=False), hashlib.sha512(), 0
    with os.fdopen(open_private(part), "wb") as out:
        while remaining is None or remaining > 0:
            want = 1 << 20 if remaining is None else min(1 << 20, remaining)
            chunk = stream.read(want)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"Image data larger than the {max_bytes} bytes allowed (the size "
                               "limit, or what is left of the project's image_size_total quota).")
            md5.update(chunk)
            sha512.update(chunk)
            out.write(chunk)
            if remaining is not None:
                remaining -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if remaining:
        raise BadRequest(f"Upload ended {remaining} bytes short of its Content-Length.")
    if size == 0:
        raise BadRequest("Upload is empty.")
    return size, md5.hexdigest(), sha512.hexdigest()


def _stream(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            yield chunk

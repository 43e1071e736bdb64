"""Image data (``/v2/images/<id>/file``): upload once, download.

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
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bottle
from sqlalchemy import update

from core.common.db import Database, rowcount
from core.common.faults import BadRequest, Conflict, Fault, TooLarge
from core.common.private import open_private
from core.common.quota import Quotas
from core.common.timeutil import now
from core.common.wsgi import commit, request_stream, session
from core.image import quotas as image_quotas
from core.image.formats import ImageFormatError, inspect
from core.image.images import load, may_modify
from core.image.models import Image
from core.image.store import ImageStore


def register(app: bottle.Bottle, db: Database, max_bytes: int, quotas: Quotas,
             store: ImageStore) -> None:
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

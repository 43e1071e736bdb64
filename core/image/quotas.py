"""Image quotas: images and MiB of image data per project, as Glance's unified limits.

Glance names its per-project limits ``image_count_total`` (images of any status
but deleted) and ``image_size_total`` (MiB of active image data) and answers
413 Request Entity Too Large past either, on create and on upload. Haven keeps
those names and answers; the limits come from the ``quota`` configuration and
per-project overrides an admin sets with ``haven quota set`` (Glance reads them
from Keystone; Haven has no Keystone limits API).

The size limit is checked twice on upload: before the data streams in (the
upload is cut off once it passes what is left), and exactly, under the
project's quota lock, when the image becomes active (two uploads racing for
the last MiB cannot both fit). Glance itself only checks before.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.common.config import QuotaConfig
from core.common.faults import TooLarge
from core.common.quota import IMAGE_SIZE, IMAGES, UNLIMITED, QuotaExceeded, Quotas
from core.image.models import Image

MIB = 1 << 20


def mib(size: int) -> int:
    """Bytes to MiB, rounded up: one byte over a MiB counts as two."""
    return -(-size // MIB)


def make_quotas(cfg: QuotaConfig) -> Quotas:
    def images(sess: Session, project_id: str) -> int:
        return int(sess.scalar(select(func.count(Image.id)).where(
            Image.owner == project_id, Image.status != "deleted")) or 0)

    def size_mib(sess: Session, project_id: str) -> int:
        sizes = sess.scalars(select(Image.size).where(
            Image.owner == project_id, Image.status == "active"))
        return sum(mib(size) for size in sizes if size is not None)

    return Quotas(cfg, {IMAGES: images, IMAGE_SIZE: size_mib})


def _over_text(exc: QuotaExceeded) -> str:
    # the text Glance passes on from oslo.limit
    parts = ", ".join(f"Resource {o.resource} is over limit of {o.limit} due to current "
                      f"usage {o.used} and delta {o.requested}" for o in exc.overs)
    return f"Project {exc.project_id} is over a limit for [{parts}]"


def enforce_image(quotas: Quotas, sess: Session, project_id: str | None) -> None:
    """Before an image record is made: 413 past ``image_count_total``."""
    try:
        quotas.enforce(sess, project_id, {IMAGES: 1})
    except QuotaExceeded as exc:
        raise TooLarge(_over_text(exc)) from None


def room_bytes(quotas: Quotas, sess: Session, project_id: str | None) -> int | None:
    """Bytes the project may still upload, read without the lock (a cap for the
    stream only); None if unlimited. 413 if the project is already at its limit."""
    if project_id is None:
        return None
    limit = quotas.limits(sess, project_id)[IMAGE_SIZE]
    if limit == UNLIMITED:
        return None
    used = quotas.usage(sess, project_id, [IMAGE_SIZE])[IMAGE_SIZE]
    if used >= limit:
        raise TooLarge(f"Project {project_id} is over a limit for [Resource "
                       f"{IMAGE_SIZE} is over limit of {limit} due to current usage "
                       f"{used} and delta 0]")
    return (limit - used) * MIB


def enforce_size(quotas: Quotas, sess: Session, project_id: str | None, size: int) -> None:
    """Before an uploaded image becomes active, in the transaction that activates it:
    413 if its data would take the project past ``image_size_total``. On refusal the
    transaction is rolled back at once, so the caller's clean-up (its own transaction)
    does not wait behind this one's quota lock."""
    try:
        quotas.enforce(sess, project_id, {IMAGE_SIZE: mib(size)})
    except QuotaExceeded as exc:
        sess.rollback()
        raise TooLarge(_over_text(exc)) from None

"""The compute agent's cache of base images, fetched from the image service.

Each image is downloaded once per instances directory (which several hosts may
share) into ``_base/<image id>``: an exclusive ``flock`` on a lock file beside it
makes a second host or thread wait for the first download instead of doing its
own, and the file is renamed into place only when complete and checked, so a
crash never leaves a truncated base that overlays would silently point at.

Every base is checked here too (core.common.diskimage), before it is renamed
into place and each time it is used: the image service checks uploads, but
an image stored before that check, or a row edited by hand, must still not
make QEMU open a file the image names. The format used is the one the image
record declares, and it is passed on explicitly (``qemu-img create -F``):
nothing on this host ever lets QEMU probe a base.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

from core.common.clients import ServiceCallError, ServiceClients
from core.common.diskimage import UnsafeImage, check
from core.common.private import open_private
from core.compute.virt.qemuuser import BASE_MODE, QemuIds, passable_dir, qemu_ids, share_base


class ImageCache:
    """Bases readable by the QEMU user's group only (0440), private from their first
    byte: downloaded into a 0600 file, given to the group, then renamed into place."""

    def __init__(self, directory: Path, clients: ServiceClients,
                 qemu: QemuIds | None = None) -> None:
        self.directory = directory
        self.clients = clients
        self.qemu = qemu or qemu_ids()

    def ensure(self, image_id: str) -> tuple[Path, str]:
        """(path of the cached base image, its disk format), downloading it if needed."""
        passable_dir(self.directory, self.qemu)
        path = self.directory / image_id
        meta = self.directory / f"{image_id}.json"
        with os.fdopen(open_private(self.directory / f"{image_id}.lock", os.O_WRONLY |
                                    os.O_CREAT), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists() and meta.exists():
                if path.stat().st_mode & 0o777 != BASE_MODE:  # made by an older Haven
                    share_base(path, self.qemu)
                fmt = str(json.loads(meta.read_text())["disk_format"])
                _check(path, fmt, image_id)
                return path, fmt
            image = self.clients.request("GET", "image", f"/v2/images/{image_id}").json()
            if image.get("status") != "active":
                raise ServiceCallError(f"image {image_id} is {image.get('status')}")
            part = path.with_suffix(".part")
            md5 = hashlib.md5(usedforsecurity=False)
            with os.fdopen(open_private(part), "wb") as out:
                for chunk in self.clients.download("image", f"/v2/images/{image_id}/file"):
                    md5.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if image.get("checksum") and md5.hexdigest() != image["checksum"]:
                part.unlink(missing_ok=True)
                raise ServiceCallError(f"image {image_id} download corrupt (checksum)")
            try:
                _check(part, str(image.get("disk_format")), image_id)
            except ServiceCallError:
                part.unlink(missing_ok=True)
                raise
            share_base(part, self.qemu)  # read by many overlays' QEMUs, never written
            os.replace(part, path)
            with os.fdopen(open_private(meta), "w") as out:
                out.write(json.dumps({"disk_format": image["disk_format"],
                                      "checksum": image.get("checksum")}))
            return path, str(image["disk_format"])


def _check(path: Path, disk_format: str, image_id: str) -> None:
    """Refuse a base that is not a self-contained image of its declared format."""
    try:
        check(path, disk_format)
    except UnsafeImage as exc:
        raise ServiceCallError(f"image {image_id} is unsafe to boot: {exc}") from None

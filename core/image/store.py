"""Where image data lives."""

from __future__ import annotations

from pathlib import Path

from core.common.private import private_dir


class ImageStore:
    """Image data as files ``<id>`` in one directory (shared storage in a cluster)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        private_dir(directory)

    def path(self, image_id: str) -> Path:
        return self.directory / image_id

    def delete(self, image_id: str) -> None:
        self.path(image_id).unlink(missing_ok=True)

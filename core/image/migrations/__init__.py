"""The image service's schema part: its tables and their history (versions/)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData

from core.common.migrate import Schema


def _metadata() -> MetaData:
    from core.image.models import ImageTable

    return ImageTable.metadata


SCHEMA = Schema(name="image", versions=Path(__file__).with_name("versions"),
                metadata=_metadata, legacy={"0002": "image_0001"})

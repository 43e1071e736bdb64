"""The compute service's schema part: its tables and their history (versions/)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData

from core.common.migrate import Schema


def _metadata() -> MetaData:
    import core.compute.keypair_models  # noqa: F401  (its table is compute's too)
    from core.compute.models import ComputeTable

    return ComputeTable.metadata


SCHEMA = Schema(name="compute", versions=Path(__file__).with_name("versions"),
                metadata=_metadata, legacy={"0002": "compute_0001"})

"""The network service's schema part: its tables and their history (versions/)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData

from core.common.migrate import Schema


def _metadata() -> MetaData:
    # imported for their tables, which join NetworkTable's metadata
    import core.network.l3_models
    import core.network.secgroup_models
    import core.network.segment_models  # noqa: F401
    from core.network.models import NetworkTable

    return NetworkTable.metadata


SCHEMA = Schema(name="network", versions=Path(__file__).with_name("versions"),
                metadata=_metadata, legacy={"0002": "network_0001"})

"""The identity service's schema part: its tables and their history (versions/)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData

from core.common.migrate import Schema


def _metadata() -> MetaData:
    from core.identity.models import IdentityTable

    return IdentityTable.metadata


SCHEMA = Schema(name="identity", versions=Path(__file__).with_name("versions"),
                metadata=_metadata, legacy={"0001": "identity_0001", "0005": "identity_0002"})

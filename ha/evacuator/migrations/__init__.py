"""The evacuation controller's schema part: its tables and their history (versions/)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData

from core.common.migrate import Schema


def _metadata() -> MetaData:
    from ha.evacuator.models import EvacuatorTable

    return EvacuatorTable.metadata


SCHEMA = Schema(name="evacuator", versions=Path(__file__).with_name("versions"),
                metadata=_metadata, legacy={"0003": "evacuator_0001"})

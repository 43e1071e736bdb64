"""The Alembic environment every schema part runs in (env.py, script.py.mako), and the
shared plumbing's own part: revocation events, cloud settings, quotas."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData

from core.common.migrate import Schema


def _metadata() -> MetaData:
    import core.common.auth
    import core.common.quota
    import core.common.settings  # noqa: F401  (their tables register on CommonTable)
    from core.common.db import CommonTable

    return CommonTable.metadata


SCHEMA = Schema(name="common", versions=Path(__file__).with_name("versions"),
                metadata=_metadata,
                legacy={"0001": "common_0001", "0002": "common_0002", "0004": "common_0003"})

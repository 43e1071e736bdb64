"""A network API with segment ranges chosen by the test (identity + network, real DB)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.common import migrate
from core.common.config import load_config
from core.common.db import Database
from core.common.server import AppServers, Listener
from ha.extensions import HA_SCHEMAS
from tests.conftest import ADMIN_PASSWORD, Services
from tests.rabbitmq import free_port


@contextmanager
def segments_cloud(tmp_path: Path, db_url: str, **segments: object) -> Iterator[Services]:
    """identity and network APIs on ``db_url`` with ``network.segments`` overridden."""
    from core.allinone import bootstrap_cloud
    from core.identity.app import create_app as identity_app
    from core.network.api import create_app as network_app

    overrides: dict[str, object] = {"state_dir": str(tmp_path / "state"),
                                    "database.url": db_url, "log.level": "WARNING"}
    for service in ("identity", "compute", "image", "network"):
        overrides[f"{service}.listen"] = f"127.0.0.1:{free_port()}"
    for key, value in segments.items():
        overrides[f"network.segments.{key}"] = value
    cfg = load_config(overrides=overrides)
    cfg.state_path.mkdir(parents=True, exist_ok=True)
    db = Database(cfg.database_url, pool_size=8)
    migrate.upgrade(db, HA_SCHEMAS)
    bootstrap_cloud(cfg, db, ADMIN_PASSWORD)
    servers = AppServers([
        Listener("identity", cfg.identity.listen, identity_app(cfg, db)),
        Listener("network", cfg.network.listen, network_app(cfg, db)),
    ], threads=12)
    servers.start()
    try:
        svc = Services(cfg, db, "")
        svc.admin_token = svc.token("admin", ADMIN_PASSWORD, "admin")
        yield svc
    finally:
        servers.stop()
        db.dispose()

"""The all-in-one: the whole cloud in one process on embedded defaults (``make run``).

Start-up is idempotent: migrate, bootstrap, (re)write the ``haven`` entry of
clouds.yaml, then serve until Ctrl-C. A second start on the same state
directory reuses everything.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from core.common import migrate
from core.common.config import HavenConfig
from core.common.db import Database
from core.common.logs import setup_logging
from core.common.server import AppServers, Listener, wait_for_signal

LOG = logging.getLogger(__name__)
CLOUD_NAME = "haven"


class CloudsYamlError(Exception):
    """An existing clouds.yaml that Haven will not overwrite."""


def write_clouds_yaml(path: Path, auth_url: str, cfg: HavenConfig, password: str,
                      region: str) -> None:
    """Add or replace the ``haven`` cloud in ``path``, keeping every other cloud.

    A file that is not valid YAML is left alone (raise): it is the operator's.
    """
    data: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise CloudsYamlError(f"{path} is not valid YAML; not touching it: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise CloudsYamlError(f"{path} is not a mapping; not touching it")
        data = loaded or {}
    clouds = data.setdefault("clouds", {})
    if not isinstance(clouds, dict):
        raise CloudsYamlError(f"{path}: 'clouds' is not a mapping; not touching it")
    clouds[CLOUD_NAME] = {
        "auth": {
            "auth_url": auth_url,
            "username": cfg.identity.admin_user,
            "password": password,
            "project_name": cfg.identity.admin_project,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "region_name": region,
        "interface": "public",
        "identity_api_version": 3,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".clouds.", suffix=".yaml")
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(data, handle, default_flow_style=False, sort_keys=False)
    os.chmod(tmp, 0o600)  # it holds a password
    os.replace(tmp, path)


def run_all_in_one(cfg: HavenConfig, clouds_yaml: Path, password: str) -> int:
    from core.identity.app import create_app
    from core.identity.bootstrap import bootstrap

    setup_logging(cfg.log.level, cfg.log.file)
    db = Database(cfg.database_url, cfg.database.pool_size, cfg.database.max_retries)
    migrate.upgrade(db)
    result = bootstrap(cfg, db, password)
    servers = AppServers([Listener("identity", cfg.identity.listen, create_app(cfg, db))])
    try:
        servers.start()
    except OSError as exc:
        print(f"haven: error: cannot listen: {exc}", file=sys.stderr)
        return 1
    bound = dict(servers.bound())
    host, _, port = bound["identity"].rpartition(":")
    auth_url = f"http://{cfg.catalog.public_host or host}:{port}/v3"
    try:
        write_clouds_yaml(clouds_yaml, auth_url, cfg, password, cfg.catalog.region)
        clouds_note = f"cloud '{CLOUD_NAME}' written to {clouds_yaml}"
    except CloudsYamlError as exc:
        clouds_note = f"clouds.yaml NOT written: {exc}"
    print(f"Haven all-in-one (state in {cfg.state_path}, database {cfg.database_url})")
    for name, addr in servers.bound():
        print(f"  {name:10s} listening on http://{addr}")
    print(f"  admin user '{cfg.identity.admin_user}' "
          f"({'created' if result.created_admin else 'existing'}), password in "
          f"{cfg.state_path / 'admin-password'} unless $HAVEN_ADMIN_PASSWORD is set")
    print(f"  {clouds_note}")
    print(f"  try: openstack --os-cloud {CLOUD_NAME} token issue    (Ctrl-C stops)", flush=True)
    try:
        signum = wait_for_signal()
        LOG.info("signal %d: stopping", signum)
    finally:
        servers.stop()
        db.dispose()
    print("Haven stopped.", flush=True)
    return 0

"""The all-in-one: the whole cloud in one process on embedded defaults (``make run``).

Start-up is idempotent: migrate, bootstrap, (re)write the ``haven`` entry of
clouds.yaml, then serve until Ctrl-C. A second start on the same state
directory reuses everything.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from core.common import migrate
from core.common.clients import ServiceClients
from core.common.config import HavenConfig
from core.common.db import Database
from core.common.extensions import NO_EXTENSIONS, Extensions
from core.common.files import write_private
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
    # it holds a password
    write_private(path, yaml.safe_dump(data, default_flow_style=False, sort_keys=False))


TINY_IMAGE = "tiny"
REPO = Path(__file__).resolve().parents[1]


def build_tiny_image(cfg: HavenConfig) -> Path:
    """Build (once; the recipe skips work it already did) the tiny test guest."""
    out = Path(cfg.compute.demo_image_dir) if cfg.compute.demo_image_dir else (
        cfg.state_path / "tiny-image")
    subprocess.run([sys.executable, str(REPO / "images" / "tiny" / "build.py"), "--out",
                    str(out)], check=True, stdout=subprocess.DEVNULL)
    return out / "tiny.qcow2"


def ensure_tiny_image(clients: ServiceClients, path: Path) -> str:
    """Upload the tiny guest as public image ``tiny`` unless an active one exists."""
    found = clients.request("GET", "image", f"/v2/images?name={TINY_IMAGE}").json()["images"]
    for image in found:
        if image["status"] == "active":
            return str(image["id"])
    image = clients.request("POST", "image", "/v2/images", json={
        "name": TINY_IMAGE, "disk_format": "qcow2", "container_format": "bare",
        "visibility": "public", "min_ram": 128}).json()
    with open(path, "rb") as data:
        clients.request("PUT", "image", f"/v2/images/{image['id']}/file", data=data,
                        headers={"Content-Type": "application/octet-stream"}, timeout=300)
    return str(image["id"])


def bootstrap_cloud(cfg: HavenConfig, db: Database, password: str,
                    provider_dhcp: bool = False) -> bool:
    """Identity, flavors and the provider network (made with DHCP if
    ``provider_dhcp``: the all-in-one's own network agent serves it,
    core/network/localnet.py); True if the admin was created."""
    from core.compute.bootstrap import ensure_flavors
    from core.identity.bootstrap import bootstrap
    from core.network.bootstrap import ensure_provider_network

    result = bootstrap(cfg, db, password)
    db.run_in_transaction(ensure_flavors)
    db.run_in_transaction(lambda s: ensure_provider_network(
        s, cfg, result.admin_project_id, dhcp=provider_dhcp))
    return result.created_admin


def client_command() -> str:
    """The stock client the set-up installed beside this Python, as the reader types it
    from where Haven was started (``.venv/bin/openstack`` after ``make run``): it is not
    on the PATH, so a bare ``openstack`` would not be found."""
    path = Path(sys.executable).parent / "openstack"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_all_in_one(cfg: HavenConfig, clouds_yaml: Path, password: str,
                   with_compute: bool = True, extensions: Extensions = NO_EXTENSIONS) -> int:
    from core.common.bus import make_bus
    from core.compute.api import create_app as compute_app
    from core.identity.app import create_app as identity_app
    from core.image.api import create_app as image_app
    from core.network.api import create_app as network_app
    from core.schemas import CORE_SCHEMAS

    setup_logging(cfg.log.level, cfg.log.file)
    db = Database(cfg.database_url, cfg.database.pool_size, cfg.database.max_retries)
    migrate.upgrade(db, (*CORE_SCHEMAS, *extensions.schemas))
    networking = with_compute and cfg.network.allinone_networking
    created = bootstrap_cloud(cfg, db, password, provider_dhcp=networking)
    bus = make_bus("local")
    clients = ServiceClients(cfg)
    # the network agent here consumes its nudges on the local bus (localnet); without
    # it, nobody would, so nothing is sent
    nudges = None
    if networking:
        from core.network.localnet import nudger

        nudges = nudger(cfg, bus)
    servers = AppServers([
        Listener("identity", cfg.identity.listen, identity_app(cfg, db)),
        Listener("compute", cfg.compute.listen, compute_app(cfg, db, bus, clients,
                                                         extensions.compute_api)),
        Listener("image", cfg.image.listen, image_app(cfg, db)),
        Listener("network", cfg.network.listen, network_app(cfg, db, nudges)),
    ])
    try:
        servers.start()
    except OSError as exc:
        print(f"haven: error: cannot listen: {exc}", file=sys.stderr)
        return 1
    agent = None
    local_net = None
    notes = []
    try:
        if networking:
            from core.network.localnet import OUTSIDE_HOST, LocalNetworking

            local_net = LocalNetworking(cfg, db, bus)
            local_net.start()
            outside = local_net.outside
            notes.append(f"network agent and routers here; '{cfg.network.provider_name}' is "
                         + (f"on uplink {outside.uplink}" if outside.uplink else
                            f"local to this machine, the host at {outside.host_address} "
                            f"on veth {OUTSIDE_HOST}"))
        if with_compute:
            from core.compute.agent import ComputeAgent
            from core.compute.virt.daemons import ensure_libvirtd
            from core.compute.virt.hostconf import leases_of
            from core.compute.virt.libvirt import LibvirtDriver

            started = ensure_libvirtd(cfg.compute.libvirt_uri, leases_of(cfg))
            if started:
                notes.append(f"started {' and '.join(started)}")
            if not networking:
                # No network agent runs (its taps are plugged into nothing): nobody
                # would report a port ACTIVE, so guests are not waited for.
                cfg.compute.vif_plugging_timeout = 0
            agent = ComputeAgent(cfg, db, bus, LibvirtDriver(cfg.compute.libvirt_uri,
                                                              cfg.compute.virt_type), clients)
            agent.start()
            image_id = ensure_tiny_image(clients, build_tiny_image(cfg))
            notes.append(f"image '{TINY_IMAGE}' is {image_id}; flavors m1.tiny, m1.small; "
                         f"network '{cfg.network.provider_name}'")
    except Exception as exc:
        if local_net is not None:
            local_net.stop()
        servers.stop()
        from core.network.localnet import OutsideError

        if isinstance(exc, OutsideError):
            print(f"haven: error: guest networking: {exc} (network.allinone_networking: "
                  "false runs without it)", file=sys.stderr)
            return 1
        raise
    host, _, port = dict(servers.bound())["identity"].rpartition(":")
    auth_url = f"http://{cfg.catalog.public_host or host}:{port}/v3"
    try:
        write_clouds_yaml(clouds_yaml, auth_url, cfg, password, cfg.catalog.region)
        clouds_note = f"cloud '{CLOUD_NAME}' written to {clouds_yaml}"
    except CloudsYamlError as exc:
        clouds_note = f"clouds.yaml NOT written: {exc}"
    print(f"Haven all-in-one (state in {cfg.state_path}, database {cfg.database_url})")
    for name, addr in servers.bound():
        print(f"  {name:10s} listening on http://{addr}")
    if agent is not None:
        print(f"  compute agent for host '{agent.host}' on {cfg.compute.libvirt_uri}")
    for note in notes:
        print(f"  {note}")
    print(f"  admin user '{cfg.identity.admin_user}' "
          f"({'created' if created else 'existing'}), password in "
          f"{cfg.state_path / 'admin-password'} unless $HAVEN_ADMIN_PASSWORD is set")
    print(f"  {clouds_note}")
    print(f"  try: {client_command()} --os-cloud {CLOUD_NAME} token issue    (Ctrl-C stops)",
          flush=True)
    try:
        signum = wait_for_signal()
        LOG.info("signal %d: stopping", signum)
    finally:
        if agent is not None:
            agent.stop()
        if local_net is not None:
            local_net.stop()
        servers.stop()
        bus.close()
        db.dispose()
    print("Haven stopped.", flush=True)
    return 0

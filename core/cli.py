"""The cloud's commands: serve, db, identity, all-in-one, config.

``ha.cli`` adds the cluster's commands on top and is the ``haven`` entry point.
Errors the operator can fix (bad config, bad option) print one line and exit 2;
they never show a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.common.cliutil import UsageError, common_options, config_from_args, open_database
from core.common.config import ConfigError, HavenConfig, defaults_yaml
from core.common.extensions import NO_EXTENSIONS, Extensions
from core.common.files import write_private
from core.common.logs import setup_logging
from core.common.migrate import Schema
from core.common.private import private_dir

LOG = logging.getLogger(__name__)
Handler = Callable[[argparse.Namespace], int]


def admin_password(cfg: HavenConfig) -> str:
    """The bootstrap admin password: $HAVEN_ADMIN_PASSWORD, else one generated once
    and kept (mode 0600) in the state directory."""
    if os.environ.get("HAVEN_ADMIN_PASSWORD"):
        return os.environ["HAVEN_ADMIN_PASSWORD"]
    path = cfg.state_path / "admin-password"
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(18)
    write_private(path, password + "\n")
    return password


def extensions_of(args: argparse.Namespace) -> Extensions:
    """The deployment's extensions, bound to the command by :func:`add_commands`."""
    ext: Extensions = getattr(args, "extensions", NO_EXTENSIONS)
    return ext


def schemas_of(args: argparse.Namespace) -> tuple[Schema, ...]:
    """The cloud's schema parts, then the deployment's."""
    from core.schemas import CORE_SCHEMAS

    return (*CORE_SCHEMAS, *extensions_of(args).schemas)


# ---- commands ---------------------------------------------------------------------
def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from core.common import migrate

    db = open_database(config_from_args(args))
    schemas = schemas_of(args)
    migrate.upgrade(db, schemas)
    revisions = migrate.current_revisions(db, schemas)
    print("database at " + ", ".join(f"{name} {rev}" for name, rev in revisions.items()))
    return 0


def cmd_db_version(args: argparse.Namespace) -> int:
    from core.common import migrate

    db = open_database(config_from_args(args))
    schemas = schemas_of(args)
    heads = migrate.head_revisions(schemas)
    for name, rev in migrate.current_revisions(db, schemas).items():
        print(f"{name:<10} current: {rev}  head: {heads[name]}")
    return 0


def cmd_identity_bootstrap(args: argparse.Namespace) -> int:
    from core.identity.bootstrap import bootstrap

    cfg = config_from_args(args)
    result = bootstrap(cfg, open_database(cfg), admin_password(cfg))
    print(f"admin user {result.admin_user_id} on project {result.admin_project_id}"
          f"{' (created)' if result.created_admin else ''}")
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from core.allinone import bootstrap_cloud
    from core.common import migrate

    cfg = config_from_args(args)
    db = open_database(cfg)
    migrate.upgrade(db, schemas_of(args))
    created = bootstrap_cloud(cfg, db, admin_password(cfg))
    print(f"cloud bootstrapped (admin {'created' if created else 'existing'}): identity, "
          f"flavors, network '{cfg.network.provider_name}'")
    return 0


def cmd_identity_rotate_keys(args: argparse.Namespace) -> int:
    from core.common.tokens import KeyRepository

    cfg = config_from_args(args)
    keys = KeyRepository(cfg.fernet_key_dir, cfg.identity.max_active_keys)
    if keys.setup():
        print(f"created Fernet keys in {cfg.fernet_key_dir}")
    indexes = keys.rotate()
    print(f"rotated: primary {max(indexes)}, staged 0, keys {indexes}")
    return 0


SERVICES = ("identity", "compute", "image", "network")


def app_factory(cfg: HavenConfig, service: str,
                extensions: Extensions = NO_EXTENSIONS) -> Callable[[], Any]:
    """A factory that builds ``service``'s WSGI app (called in each gunicorn worker,
    after the fork, so every worker has its own database pool and bus connection)."""

    def factory() -> Any:
        db = open_database(cfg)
        if service == "identity":
            from core.identity.app import create_app as identity_app

            return identity_app(cfg, db)
        if service == "image":
            from core.image.api import create_app as image_app

            return image_app(cfg, db)
        from core.common.bus import make_bus

        if service == "network":
            from core.network.agent_nudges import Nudger
            from core.network.api import create_app as network_app

            # the local bus reaches no agent (each runs in its own process)
            bus = None if cfg.bus.driver == "local" else make_bus(
                cfg.bus.driver, cfg.bus.urls, "network-api", cfg.tls.ca_file)
            return network_app(cfg, db, Nudger(bus))
        from core.compute.api import create_app as compute_app

        return compute_app(cfg, db, make_bus(cfg.bus.driver, cfg.bus.urls, "compute-api",
                                                 cfg.tls.ca_file),
                           extensions=extensions.compute_api)

    return factory


def listen_of(cfg: HavenConfig, service: str) -> str:
    return str(getattr(cfg, service).listen)


def cmd_serve(args: argparse.Namespace) -> int:
    from core.common.server import serve_gunicorn

    cfg = config_from_args(args)
    if args.service not in SERVICES:
        raise UsageError(f"unknown service {args.service!r} (known: {', '.join(SERVICES)})")
    if args.workers < 1 or args.threads < 1:
        raise UsageError("--workers and --threads must be at least 1")
    setup_logging(cfg.log.level, cfg.log.file)
    tls = (str(cfg.tls.cert_file), str(cfg.tls.key_file)) if cfg.tls.enabled else None
    serve_gunicorn(app_factory(cfg, args.service, extensions_of(args)),
                   args.listen or listen_of(cfg, args.service), args.workers, args.threads,
                   args.service, tls)
    return 0


def check_hypervisor(cfg: HavenConfig) -> None:
    """Refuse to run guests on a libvirt that `haven cluster node-config` did not set up:
    without disk leases nothing stops a second QEMU on a disk another host runs."""
    from core.compute.virt.daemons import ETC_LIBVIRT
    from core.compute.virt.hostconf import leases_of, make_lease_dir, missing_settings

    leases = leases_of(cfg)
    missing = missing_settings(ETC_LIBVIRT, leases)
    if missing:
        raise UsageError(f"libvirt on this node lacks Haven's settings ({'; '.join(missing)}): "
                         "run `haven cluster node-config` and restart libvirtd")
    make_lease_dir(leases)


def cmd_compute_agent(args: argparse.Namespace) -> int:
    """Run this hypervisor's compute agent in the foreground until SIGTERM/SIGINT."""
    from core.common.bus import make_bus
    from core.common.server import wait_for_signal
    from core.compute.agent import ComputeAgent
    from core.compute.virt.libvirt import LibvirtDriver

    cfg = config_from_args(args)
    setup_logging(cfg.log.level, cfg.log.file)
    if cfg.bus.driver == "local":
        raise UsageError("the compute agent runs in its own process: set bus.driver to amqp "
                         "(the local bus only works inside the all-in-one)")
    if cfg.compute.libvirt_uri.startswith("qemu:///system"):
        check_hypervisor(cfg)
    db = open_database(cfg)
    bus = make_bus(cfg.bus.driver, cfg.bus.urls, f"compute-{cfg.compute_host}", cfg.tls.ca_file)
    agent = ComputeAgent(cfg, db, bus, LibvirtDriver(cfg.compute.libvirt_uri,
                                                      cfg.compute.virt_type))
    agent.start()
    try:
        wait_for_signal()
    finally:
        agent.stop()
        bus.close()
    return 0


def cmd_network_agent(args: argparse.Namespace) -> int:
    """Run this hypervisor's network agent in the foreground until SIGTERM/SIGINT."""
    import threading

    from core.common.bus import make_bus
    from core.common.server import wait_for_signal
    from core.network.agent.agent import NetworkAgent, heartbeat_path
    from core.network.agent.mechanism import build_driver
    from core.network.agent_nudges import consume

    cfg = config_from_args(args)
    setup_logging(cfg.log.level, cfg.log.file)
    # Either mechanism is filtered: the security groups are nftables rules on Linux
    # bridges' hooks, and Open vSwitch puts each tap in a Linux bridge of its own
    # (hybrid plugging) for them, as Neutron's iptables_hybrid driver did.
    driver = build_driver(cfg.network.datapath)  # checks local_ip and the mappings
    db = open_database(cfg)
    run_dir = Path(cfg.network.agent_run_dir)
    run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)  # dnsmasq must pass through
    agent = NetworkAgent(db, cfg.compute_host, cfg.network.datapath.local_ip, driver,
                         run_dir)
    # A nudge only starts the next round sooner; the database stays the truth, so
    # without a bus (the local one cannot reach another process) rounds just wait.
    bus = None if cfg.bus.driver == "local" else make_bus(
        cfg.bus.driver, cfg.bus.urls, f"network-{cfg.compute_host}", cfg.tls.ca_file)
    subscription = None if bus is None else consume(bus, agent)
    loop = threading.Thread(target=agent.run, name="network-agent", daemon=True,
                            args=(cfg.network.agent_interval, heartbeat_path(cfg.state_path)))
    loop.start()
    try:
        wait_for_signal()
    finally:
        agent.stop()
        if subscription is not None:
            subscription.stop()
        loop.join(timeout=30)
        if bus is not None:
            bus.close()
    return 0


def cmd_all_in_one(args: argparse.Namespace) -> int:
    from core.allinone import run_all_in_one

    cfg = config_from_args(args)
    if cfg.tls.enabled:
        # its servers speak plain http: a catalog of https endpoints would be a lie
        raise UsageError("tls: the all-in-one serves plain http on its own host; tls is "
                         "for cluster nodes (haven serve)")
    private_dir(cfg.state_path)
    return run_all_in_one(cfg, Path(args.clouds_yaml).expanduser(), admin_password(cfg),
                          with_compute=not args.no_compute, extensions=extensions_of(args))


def _all_quotas(cfg: HavenConfig) -> list[Any]:
    from core.compute.quotas import make_quotas as compute_quotas
    from core.image.quotas import make_quotas as image_quotas
    from core.network.quotas import make_quotas as network_quotas

    return [f(cfg.quota) for f in (compute_quotas, network_quotas, image_quotas)]


def _project_id(session: Any, ref: str) -> str:
    from sqlalchemy import select

    from core.identity.models import Project

    if session.get(Project, ref) is not None:
        return ref
    found = list(session.scalars(select(Project.id).where(Project.name == ref,
                                                           Project.domain_id == "default")))
    if len(found) != 1:
        raise UsageError(f"no project {ref!r} (by id, or by name in the default domain)")
    return str(found[0])


def cmd_quota_show(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    db = open_database(cfg)
    with db.session() as s:
        project = _project_id(s, args.project)
        print(f"{'resource':<20} {'limit':>12} {'in use':>12}")
        for quotas in _all_quotas(cfg):
            limits, used = quotas.limits(s, project), quotas.usage(s, project)
            for resource in quotas.resources:
                print(f"{resource:<20} {limits[resource]:>12} {used[resource]:>12}")
    return 0


def cmd_quota_set(args: argparse.Namespace) -> int:
    from core.common.quota import RESOURCES

    cfg = config_from_args(args)
    wanted = {r: getattr(args, r) for r in RESOURCES if getattr(args, r) is not None}
    if not wanted and not args.reset:
        raise UsageError("name at least one limit to set (or --reset)")
    if any(v < -1 for v in wanted.values()):
        raise UsageError("a limit is -1 (unlimited) or more")

    def unit(s: Any) -> None:
        project = _project_id(s, args.project)
        for quotas in _all_quotas(cfg):
            if args.reset:
                quotas.reset(s, project)
            mine = {r: v for r, v in wanted.items() if r in quotas.resources}
            if mine:
                quotas.set_limits(s, project, mine)

    open_database(cfg).run_in_transaction(unit)
    return cmd_quota_show(args)


def cmd_config_defaults(_args: argparse.Namespace) -> int:
    sys.stdout.write(defaults_yaml())
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config_from_args(args)
    print("configuration is valid")
    return 0


# ---- parser -------------------------------------------------------------------------
def add_commands(sub: Any, extensions: Extensions = NO_EXTENSIONS) -> None:
    """Add the cloud's commands to an argparse sub-parser collection; the commands that
    migrate or serve carry ``extensions`` (the deployment's additions) with them."""
    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_cmd", required=True)
    p = db.add_parser("upgrade", help="migrate the schema to the newest revision")
    common_options(p)
    p.set_defaults(func=cmd_db_upgrade, extensions=extensions)
    p = db.add_parser("version", help="show the schema revision")
    common_options(p)
    p.set_defaults(func=cmd_db_version, extensions=extensions)

    p = sub.add_parser("bootstrap", help="migrate, then create the admin, roles, catalog, "
                       "flavors and the provider network (idempotent)")
    common_options(p)
    p.set_defaults(func=cmd_bootstrap, extensions=extensions)

    ident = sub.add_parser("identity", help="identity service administration").add_subparsers(
        dest="identity_cmd", required=True)
    p = ident.add_parser("bootstrap", help="create the admin, the roles and the catalog")
    common_options(p)
    p.set_defaults(func=cmd_identity_bootstrap)
    p = ident.add_parser("rotate-keys", help="rotate the Fernet token keys")
    common_options(p)
    p.set_defaults(func=cmd_identity_rotate_keys)

    p = sub.add_parser("serve", help="run one API service under gunicorn")
    p.add_argument("service", help=", ".join(SERVICES))
    p.add_argument("--listen", help="HOST:PORT (default: from config)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4)
    common_options(p)
    p.set_defaults(func=cmd_serve, extensions=extensions)

    p = sub.add_parser("compute-agent", help="run this hypervisor's compute agent")
    common_options(p)
    p.set_defaults(func=cmd_compute_agent)

    p = sub.add_parser("network-agent", help="run this hypervisor's network agent")
    common_options(p)
    p.set_defaults(func=cmd_network_agent)

    p = sub.add_parser("all-in-one", help="run the whole cloud in one process (make run)")
    p.add_argument("--no-compute", action="store_true",
                   help="API services only: no libvirt, no compute agent, no tiny image")
    p.add_argument("--clouds-yaml", default="~/.config/openstack/clouds.yaml",
                   help="clouds.yaml to add the 'haven' cloud to")
    common_options(p)
    p.set_defaults(func=cmd_all_in_one, extensions=extensions)

    quota = sub.add_parser("quota", help="per-project quotas, images included (the stock "
                           "CLI's 'openstack quota' has no image options)").add_subparsers(
        dest="quota_cmd", required=True)
    p = quota.add_parser("show", help="every limit of a project, with its usage")
    p.add_argument("project", help="project id, or name in the default domain")
    common_options(p)
    p.set_defaults(func=cmd_quota_show)
    p = quota.add_parser("set", help="set limits of a project (-1: unlimited)")
    p.add_argument("project", help="project id, or name in the default domain")
    from core.common.quota import RESOURCES

    for resource in RESOURCES:
        unit = " (MiB)" if resource in ("ram", "image_size_total") else ""
        p.add_argument(f"--{resource.replace('_', '-')}", dest=resource, type=int,
                       metavar="N", help=f"limit of {resource}{unit}")
    p.add_argument("--reset", action="store_true",
                   help="first forget every limit set for the project (defaults apply)")
    common_options(p)
    p.set_defaults(func=cmd_quota_set)

    cfg = sub.add_parser("config", help="configuration reference and checks").add_subparsers(
        dest="config_cmd", required=True)
    p = cfg.add_parser("defaults", help="print every setting with its default")
    p.set_defaults(func=cmd_config_defaults)
    p = cfg.add_parser("check", help="validate a config file")
    common_options(p)
    p.set_defaults(func=cmd_config_check)


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse and dispatch; operator errors become one line on stderr and exit 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, UsageError) as exc:
        print(f"haven: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

"""``haven cluster ...``: node configuration and the cluster bootstrap.

* ``haven cluster node-config --plan P --secrets S --node N [--root DIR]``
  writes one node's Galera, RabbitMQ and Haven configuration (run on each node);
* ``haven cluster bootstrap --plan P [--save FILE]`` loads the CIB on a formed
  cluster, stage by stage, and saves the commands as a script;
* ``haven cluster script --plan P`` prints the pcs commands without running them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from core.common.cliutil import UsageError
from ha.bootstrap.cib import ClusterPlan, all_commands, render_script
from ha.bootstrap.nodeconf import Secrets, write_node_files

PLAN_KEYS = {"nodes", "vip", "vip_nic", "haven_config", "fence_agent", "fence_options",
             "hypervisors", "addresses", "cluster_name", "db_buffer_pool", "shared_dir",
             "api_workers", "compute_overrides", "fence_password_files",
             "network_nodes", "l3_shards", "network_agents", "physical_interfaces"}
DEFAULT_SAVE = "/etc/haven/cluster-bootstrap.sh"
DEFAULT_CA_DIR = "/etc/haven/cluster-ca"


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: the {what} must be a mapping")
    return data


def load_plan(path: Path) -> ClusterPlan:
    """A cluster plan from YAML; operator mistakes become UsageError (exit 2)."""
    data = _read_yaml(path, "plan")
    unknown = sorted(set(data) - PLAN_KEYS)
    if unknown:
        raise UsageError(f"{path}: {unknown[0]}: unknown plan key (known: "
                         f"{', '.join(sorted(PLAN_KEYS))})")
    for key in ("nodes", "vip", "vip_nic"):
        if key not in data:
            raise UsageError(f"{path}: {key}: required")
    try:
        return ClusterPlan(
            nodes=tuple(str(n) for n in data["nodes"]), vip=str(data["vip"]),
            vip_nic=str(data["vip_nic"]),
            haven_config=str(data.get("haven_config", "/etc/haven/haven.yaml")),
            fence_agent=str(data.get("fence_agent", "fence_ipmilan")),
            fence_options={str(k): {str(a): str(b) for a, b in v.items()}
                           for k, v in (data.get("fence_options") or {}).items()},
            hypervisors=tuple(str(h) for h in data.get("hypervisors") or ()),
            addresses={str(k): str(v) for k, v in (data.get("addresses") or {}).items()},
            cluster_name=str(data.get("cluster_name", "haven")),
            db_buffer_pool=str(data.get("db_buffer_pool", "128M")),
            shared_dir=str(data["shared_dir"]) if data.get("shared_dir") else None,
            api_workers=int(data.get("api_workers", 2)),
            compute_overrides=dict(data.get("compute_overrides") or {}),
            fence_password_files=bool(data.get("fence_password_files", False)),
            network_nodes=tuple(str(n) for n in data.get("network_nodes") or ()),
            l3_shards=int(data.get("l3_shards", 3)),
            network_agents=bool(data.get("network_agents", True)),
            physical_interfaces={str(k): str(v) for k, v in
                                 (data.get("physical_interfaces") or {}).items()})
    except (TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"{path}: {exc}") from None


def cmd_script(args: argparse.Namespace) -> int:
    sys.stdout.write(render_script(all_commands(load_plan(Path(args.plan)))))
    return 0


def cmd_corosync_conf(args: argparse.Namespace) -> int:
    """corosync.conf for the plan's nodes (ids in plan order, addresses from the plan)."""
    from types import SimpleNamespace

    from ha.bootstrap.corosync import corosync_conf

    plan = load_plan(Path(args.plan))
    missing = [n for n in plan.nodes if n not in plan.addresses]
    if missing:
        raise UsageError(f"{args.plan}: addresses: no address for {', '.join(missing)}")
    if args.token < 500:
        raise UsageError("--token: at least 500 ms")
    nodes = [SimpleNamespace(name=n, nodeid=i, address=plan.addresses[n])
             for i, n in enumerate(plan.nodes, start=1)]
    text = corosync_conf(plan.cluster_name, nodes, args.token)
    if args.write:
        Path(args.write).write_text(text)
        print(f"wrote {args.write}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_node_config(args: argparse.Namespace) -> int:
    from ha.bootstrap.tls import CAError, load_or_create_ca

    plan = load_plan(Path(args.plan))
    try:
        secrets = Secrets.from_mapping(_read_yaml(Path(args.secrets), "secrets file"))
        ca = load_or_create_ca(Path(args.ca), plan.cluster_name)
        written = write_node_files(plan, args.node, secrets, ca, Path(args.root))
    except (ValueError, CAError) as exc:
        raise UsageError(str(exc)) from None
    for path in written:
        print(path)
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from core.common.config import ConfigError, load_config
    from ha.bootstrap.run import Bootstrap, BootstrapError, save_script, stages

    plan = load_plan(Path(args.plan))
    try:
        cfg = load_config(plan.haven_config)
    except (ConfigError, OSError) as exc:
        raise UsageError(f"{plan.haven_config}: {exc}") from None
    if not cfg.database.url:
        raise UsageError(f"{plan.haven_config}: database.url: required in a cluster")
    boot = Bootstrap(plan, progress=lambda m: print(m, flush=True))
    try:
        boot.run_stages(stages(plan, args.haven_binary, cfg.database.url))
    except BootstrapError as exc:
        print(f"bootstrap failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.save:
            save_script(boot.done, Path(args.save))
            print(f"commands saved to {args.save}")
    return 0


def cmd_l3_shards(args: argparse.Namespace) -> int:
    import subprocess

    from core.network.routerns.shards import shard_of
    from ha.crm import parse_crm_mon
    from ha.l3_status import render, shard_holders

    result = subprocess.run(["crm_mon", "-1", "--output-as=xml"], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        print(f"crm_mon failed: {result.stderr.strip()[-300:]}", file=sys.stderr)
        return 1
    view = parse_crm_mon(result.stdout)
    print(render(view), end="")
    if args.router:
        holders = shard_holders(view)
        if not holders:
            return 1
        shard = f"haven-l3-{shard_of(args.router, len(holders))}"
        where = ", ".join(holders.get(shard, ())) or "stopped"
        print(f"router {args.router}: {shard} on {where}")
    return 0


def add_commands(sub: Any) -> None:
    cluster = sub.add_parser("cluster", help="cluster bootstrap").add_subparsers(
        dest="cluster_cmd", required=True)
    plan_help = ("cluster plan (YAML: nodes, vip, vip_nic, hypervisors, addresses, fence_agent, "
                 "fence_options, haven_config, shared_dir, ...)")
    p = cluster.add_parser("script", help="print the pcs script that loads the CIB")
    p.add_argument("--plan", required=True, help=plan_help)
    p.set_defaults(func=cmd_script)
    p = cluster.add_parser("corosync-conf", help="corosync.conf for the plan's nodes")
    p.add_argument("--plan", required=True, help=plan_help)
    p.add_argument("--token", type=int, default=3000, help="totem token in ms (default 3000)")
    p.add_argument("--write", help="write it here (e.g. /etc/corosync/corosync.conf) "
                   "instead of printing it")
    p.set_defaults(func=cmd_corosync_conf)
    p = cluster.add_parser("node-config", help="write one node's Galera, RabbitMQ and Haven "
                           "configuration")
    p.add_argument("--plan", required=True, help=plan_help)
    p.add_argument("--secrets", required=True, help="YAML: db_password, bus_password, "
                   "service_password, erlang_cookie, fence_passwords (node: password, with "
                   "the plan's fence_password_files); the same file on every node")
    p.add_argument("--node", required=True, help="this node's name in the plan")
    p.add_argument("--ca", default=DEFAULT_CA_DIR, help="the cluster CA's directory (ca.crt, "
                   "ca.key): made by the first node's run if empty; copy it to the other "
                   f"nodes with the secrets file (default {DEFAULT_CA_DIR})")
    p.add_argument("--root", default="/", help="write under this directory (default /)")
    p.set_defaults(func=cmd_node_config)
    p = cluster.add_parser("bootstrap", help="load the CIB on a formed cluster, stage by stage")
    p.add_argument("--plan", required=True, help=plan_help)
    p.add_argument("--save", default=DEFAULT_SAVE, help="where to save the commands run "
                   f"(default {DEFAULT_SAVE}; '' to skip)")
    p.add_argument("--haven-binary", default=str(Path(sys.executable).parent / "haven"),
                   help="the haven command the cluster nodes run")
    p.set_defaults(func=cmd_bootstrap)
    p = cluster.add_parser("l3-shards", help="which node holds which router shard")
    p.add_argument("--router", help="also say which shard (and node) carries this router")
    p.set_defaults(func=cmd_l3_shards)

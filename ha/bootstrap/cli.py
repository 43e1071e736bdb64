"""``haven cluster ...``: the cluster bootstrap commands (the script part so far)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from core.cli import UsageError
from ha.bootstrap.cib import ClusterPlan, all_commands, render_script

PLAN_KEYS = {"nodes", "vip", "vip_nic", "haven_config", "fence_agent", "fence_options",
             "hypervisors"}


def load_plan(path: Path) -> ClusterPlan:
    """A cluster plan from YAML; operator mistakes become UsageError (exit 2)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read plan {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: the plan must be a mapping")
    unknown = sorted(set(data) - PLAN_KEYS)
    if unknown:
        raise UsageError(f"{path}: {unknown[0]}: unknown plan key (known: "
                         f"{', '.join(sorted(PLAN_KEYS))})")
    for key in ("nodes", "vip", "vip_nic"):
        if key not in data:
            raise UsageError(f"{path}: {key}: required")
    try:
        return ClusterPlan(nodes=tuple(str(n) for n in data["nodes"]), vip=str(data["vip"]),
                           vip_nic=str(data["vip_nic"]),
                           haven_config=str(data.get("haven_config", "/etc/haven/haven.yaml")),
                           fence_agent=str(data.get("fence_agent", "fence_ipmilan")),
                           fence_options=dict(data.get("fence_options") or {}),
                           hypervisors=tuple(str(h) for h in data.get("hypervisors") or ()))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{path}: {exc}") from None


def cmd_script(args: argparse.Namespace) -> int:
    sys.stdout.write(render_script(all_commands(load_plan(Path(args.plan)))))
    return 0


def add_commands(sub: Any) -> None:
    cluster = sub.add_parser("cluster", help="cluster bootstrap").add_subparsers(
        dest="cluster_cmd", required=True)
    p = cluster.add_parser("script", help="print the pcs script that loads the CIB")
    p.add_argument("--plan", required=True, help="cluster plan (YAML: nodes, vip, vip_nic, "
                   "hypervisors, fence_agent, fence_options, haven_config)")
    p.set_defaults(func=cmd_script)

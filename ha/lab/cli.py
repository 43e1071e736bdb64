"""``haven lab ...``: build a lab cluster, look at it, break it, tear it down.

Operator mistakes (no lab up, unknown node, a lab already up, not root) print one
line and exit 2 via core.common.cliutil.UsageError; a lab operation that fails (a command
inside a node failed, a wait timed out) prints one line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.common.cliutil import UsageError
from ha.lab import config, faults, lifecycle, node, power, state
from ha.lab.commands import CLEAN_ENV, LabError

Handler = Callable[[argparse.Namespace], int]


def _lab_dir(args: argparse.Namespace) -> Path:
    return Path(args.lab_dir) if args.lab_dir else state.default_lab_dir()


def _guarded(func: Handler) -> Handler:
    """Map the lab's exceptions to the CLI's contract (see module docstring)."""
    def handler(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (config.PlanError, LookupError, lifecycle.LabBusyError,
                lifecycle.PreflightError) as exc:
            raise UsageError(str(exc).strip("'\"")) from None
        except LabError as exc:
            print(f"haven: lab: {exc}", file=sys.stderr)
            return 1
    return handler


def _progress(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    report = lifecycle.up(_lab_dir(args), args.nodes, with_libvirt=args.libvirt,
                          fence_action=args.fence_action, token_ms=args.token,
                          boot_delay=args.boot_delay, timeout=args.timeout,
                          progress=_progress)
    print(f"lab up: {', '.join(report.nodes)}; cluster formed {report.seconds_to_form:.1f} s "
          f"after power-on ({report.seconds_total:.1f} s in all); fencing via "
          f"{config.FENCE_AGENT}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    st = lifecycle.status(_lab_dir(args), with_cluster=not args.no_cluster)
    if args.json:
        data: dict[str, Any] = asdict(st)
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(f"lab at {st.lab_dir}: {st.phase}; power switch "
          f"{'running' if st.power_switch else 'NOT running'}")
    print(f"{'NODE':8} {'ADDRESS':14} {'POWER':7} {'LINK':5} {'INIT':>7} {'PROCS':>5} {'MiB':>7}")
    for n in st.nodes:
        print(f"{n.name:8} {n.address:14} {n.power:7} {n.link:5} {n.init_pid or '-':>7} "
              f"{n.processes:>5} {n.memory_mib:>7.1f}")
    if st.cluster is not None:
        view = st.cluster
        print(f"cluster as {st.observer} sees it: online {', '.join(view.online) or 'none'}; "
              f"DC {view.dc or 'none'}; {'quorate' if view.quorum else 'NO quorum'}")
        for res in view.resources.values():
            where = ", ".join(res.nodes) or "-"
            print(f"  {res.id}: {res.role or 'Stopped'} on {where}")
    elif st.observer:
        print(f"cluster: {st.observer} gave no answer (still starting?)")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageError("exec wants a command: haven lab exec NODE -- CMD...")
    nd = _node(args)
    pid = node.require_running(nd)
    # Inherit our terminal: exec is interactive (crm_mon, a shell, virsh console).
    env = {**CLEAN_ENV, "TERM": "xterm"}
    return subprocess.call(node.nsenter_argv(pid, argv), env=env)


def _node(args: argparse.Namespace) -> state.NodeState:
    st = state.load(_lab_dir(args))
    if st is None:
        raise state.NoLabError(f"no lab is up at {_lab_dir(args)} (start one: haven lab up)")
    return st.node(args.node)


def cmd_kill(args: argparse.Namespace) -> int:
    was_on = faults.kill(_lab_dir(args), args.node)
    print(f"{args.node}: power cut" if was_on else f"{args.node}: was already off")
    return 0


def cmd_on(args: argparse.Namespace) -> int:
    _node(args)
    reply = power.request(_lab_dir(args) / state.SOCKET_FILE, "on", args.node)
    if not reply.get("ok"):
        raise LabError(str(reply.get("error")))
    print(f"{args.node}: outlet on, booting (see `haven lab status`)" if reply.get("changed")
          else f"{args.node}: was already on")
    return 0


def cmd_freeze(args: argparse.Namespace) -> int:
    print(f"{args.node}: froze {faults.freeze(_lab_dir(args), args.node)} processes")
    return 0


def cmd_thaw(args: argparse.Namespace) -> int:
    print(f"{args.node}: thawed {faults.thaw(_lab_dir(args), args.node)} processes")
    return 0


def cmd_cut(args: argparse.Namespace) -> int:
    faults.cut(_lab_dir(args), args.node)
    print(f"{args.node}: link down")
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    faults.heal(_lab_dir(args), args.node)
    print(f"{args.node}: link up")
    return 0


def cmd_kill_service(args: argparse.Namespace) -> int:
    pids = faults.kill_service(_lab_dir(args), args.node, args.service)
    print(f"{args.node}: killed {args.service} (pid {', '.join(map(str, pids))})")
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from ha.lab import stack

    seconds = stack.up_stack(_lab_dir(args), progress=_progress, timeout=args.timeout,
                             networking=args.networking)
    st = state.load(_lab_dir(args))
    assert st is not None
    p = stack.paths(_lab_dir(args))
    print(f"stack up in {seconds:.0f} s: Galera, RabbitMQ and Haven on every node, API at "
          f"{stack.auth_url(st)} (clients: haven lab client -- CMD; "
          f"clouds.yaml {p.clouds_yaml}, CA {p.ca / 'ca.crt'}, commands saved in {p.script})")
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    from ha.lab import stack

    st = state.load(_lab_dir(args))
    if st is None:
        raise UsageError("no lab is up")
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("client: give a command, e.g. haven lab client -- openstack token issue")
    env = {**CLEAN_ENV, **stack.client_env(_lab_dir(args))}
    return subprocess.run(stack.client_argv(st, argv), env=env).returncode


def cmd_down(args: argparse.Namespace) -> int:
    report = lifecycle.down(_lab_dir(args), force=args.force)
    print(f"lab down: {len(report.killed)} processes killed, "
          f"{len(report.namespaces)} namespaces and {len(report.removed)} paths removed")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``lab`` and its subcommands to the ``haven`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--lab-dir", help="lab directory (default: $HAVEN_LAB_DIR or "
                        f"{state.DEFAULT_LAB_DIR})")
    lab = sub.add_parser("lab", help="a real cluster of namespace nodes on this machine")
    cmds = lab.add_subparsers(dest="lab_cmd", required=True)

    def leaf(name: str, func: Handler, help_text: str, with_node: bool = True,
             ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = cmds.add_parser(name, help=help_text, parents=[common])
        if with_node:
            p.add_argument("node", help="node name (node1, node2, ...)")
        p.set_defaults(func=_guarded(func))
        return p

    p = leaf("up", cmd_up, "build N nodes running corosync + pacemaker, fencing on",
             with_node=False)
    p.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    p.add_argument("--libvirt", action="store_true", help="also run libvirtd in every node")
    p.add_argument("--fence-action", choices=config.FENCE_ACTIONS, default="off",
                   help="what a fence does (default off: a fenced node stays off)")
    p.add_argument("--token", type=int, default=config.DEFAULT_TOKEN_MS,
                   help="corosync token timeout in ms (default %(default)s)")
    p.add_argument("--boot-delay", type=float, default=20.0,
                   help="seconds a node stays dark after a power-off before \"on\" boots it "
                   "(longer than the cluster takes to notice it gone; default %(default)s)")
    p.add_argument("--timeout", type=float, default=180.0,
                   help="seconds to wait for the cluster to form (default %(default)s)")
    p = leaf("status", cmd_status, "nodes, power, links, memory, and the cluster's view",
             with_node=False)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-cluster", action="store_true", help="do not ask crm_mon")
    p = leaf("exec", cmd_exec, "run a command inside a node: exec NODE -- CMD...")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="the command")
    leaf("kill", cmd_kill, "power loss: link down, then SIGKILL the node's init")
    leaf("on", cmd_on, "power a node on again (through the power switch)")
    leaf("freeze", cmd_freeze, "SIGSTOP every process of the node")
    leaf("thaw", cmd_thaw, "SIGCONT every process of the node")
    leaf("cut", cmd_cut, "take the node's link down")
    leaf("heal", cmd_heal, "bring the node's link up")
    p = leaf("kill-service", cmd_kill_service, "SIGKILL one daemon of a node by name")
    p.add_argument("service", help="process name, e.g. corosync or pacemaker-controld")
    p = leaf("stack", cmd_stack, "bootstrap Galera, RabbitMQ, the Haven services and the VIP "
             "on the lab (haven cluster bootstrap)", with_node=False)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds (default %(default)s)")
    p.add_argument("--networking", action="store_true",
                   help="also tenant networks, DHCP, security groups, routers and floating "
                        "IPs (a network agent per node, router shards, the provider network "
                        "on each node's eth1; floating IPs reached from the switch namespace)")
    p = leaf("client", cmd_client, "run a client command where the VIP is reachable (the "
             "switch namespace), with the lab's clouds.yaml: client -- CMD...", with_node=False)
    p.add_argument("argv", nargs=argparse.REMAINDER, help="the command")
    p = leaf("down", cmd_down, "remove every namespace, mount, process and file of the lab",
             with_node=False)
    p.add_argument("--force", action="store_true",
                   help=f"also remove {config.PREFIX}-* namespaces this lab directory does not "
                   "know (the remains of a lab whose directory was deleted)")

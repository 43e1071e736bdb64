"""Faults the lab injects into a running node (docs/architecture.md, "The lab").

- kill: power loss. The link goes down first, then init gets SIGKILL, so peers
  notice by silence (token loss), as with a real pulled plug.
- freeze / thaw: SIGSTOP / SIGCONT every process of the node: a hung machine,
  which must be fenced rather than waited on.
- cut / heal: the node's link down / up; the node itself keeps running.
- kill-service: SIGKILL one daemon by name (corosync, pacemaker-controld...).
- jam-fence / mend-fence: the node's outlet on the power switch refuses "off", so
  every fence of it fails (the fence agent answers failure) until mended.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from ha.lab import network, node, power, proc, state
from ha.lab.commands import LabError

COMM_LEN = 15  # the kernel keeps 15 characters of a process name


def _node(lab_dir: Path, name: str) -> tuple[state.LabState, state.NodeState]:
    st = state.load(lab_dir)
    if st is None:
        raise state.NoLabError(f"no lab is up at {lab_dir} (start one: haven lab up)")
    return st, st.node(name)


def kill(lab_dir: Path, name: str) -> bool:
    """Power loss (the same code path as a fence "off"). True if it was on."""
    _node(lab_dir, name)
    return power.power_off(lab_dir, name)


def _signal_all(nd: state.NodeState, sig: signal.Signals) -> int:
    """Signal every process of the node until none is left to change state.

    Several passes: a process may fork between listing and signalling.
    """
    node.require_running(nd)
    done: set[int] = set()
    for _ in range(5):
        todo = [pid for pid in node.pids(nd) if pid not in done]
        if not todo:
            break
        for pid in todo:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            done.add(pid)
    return len(done)


def freeze(lab_dir: Path, name: str) -> int:
    """SIGSTOP the whole node; returns how many processes were stopped."""
    _, nd = _node(lab_dir, name)
    return _signal_all(nd, signal.SIGSTOP)


def thaw(lab_dir: Path, name: str) -> int:
    _, nd = _node(lab_dir, name)
    return _signal_all(nd, signal.SIGCONT)


def cut(lab_dir: Path, name: str) -> None:
    st, nd = _node(lab_dir, name)
    network.set_link(st.switch_ns, nd.veth, up=False)


def heal(lab_dir: Path, name: str) -> None:
    st, nd = _node(lab_dir, name)
    network.set_link(st.switch_ns, nd.veth, up=True)


def matching(pids: list[int], service: str) -> list[int]:
    """The processes among ``pids`` named ``service`` (by comm, which the kernel
    truncates to 15 characters: pacemaker-schedulerd is "pacemaker-sched"), or, for
    a ``service`` with a space in it, whose command line contains it ("serve
    identity": every Haven service runs as the same ``haven`` command)."""
    want = service[:COMM_LEN]
    found = []
    for pid in pids:
        if " " in service:
            if service in " ".join(proc.cmdline(pid)):
                found.append(pid)
            continue
        st = proc.stat(pid)
        if st is not None and st.comm == want:
            found.append(pid)
    return found


def kill_service(lab_dir: Path, name: str, service: str) -> list[int]:
    """SIGKILL the node's processes named ``service``; returns their PIDs."""
    _, nd = _node(lab_dir, name)
    node.require_running(nd)
    # Never the node's init: ending it is a power cut, which is `kill`.
    victims = [p for p in matching(node.pids(nd), service) if p != nd.init_pid]
    if not victims:
        raise LabError(f"no process named {service!r} runs on {name}")
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return victims


def jam_fence(lab_dir: Path, name: str, jam: bool = True) -> None:
    """Make every fence of ``name`` fail (``jam=False``: succeed again)."""
    st, _ = _node(lab_dir, name)
    reply = power.request(st.socket_path, "jam" if jam else "unjam", name)
    if not reply.get("ok"):
        raise LabError(f"the power switch refused to {'jam' if jam else 'mend'} the outlet "
                       f"of {name}: {reply.get('error')}")

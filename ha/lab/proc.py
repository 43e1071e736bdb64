"""Reading /proc: which processes belong to a node, and whether a PID is still ours.

PIDs are recycled (pid_max is small here), so the lab names a process by its PID
*and* its start time; killing "pid 1234" after a node died could otherwise hit an
unrelated process. A node's processes are exactly those in its init's PID
namespace, which is how freeze, kill-service and memory accounting find them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Stat:
    """The few fields of /proc/PID/stat the lab uses."""

    comm: str
    state: str
    ppid: int
    start_time: int


def parse_stat(text: str) -> Stat:
    """Parse /proc/PID/stat; ``comm`` may hold spaces and parentheses, so split at
    the *last* closing parenthesis."""
    head, _, tail = text.rpartition(")")
    comm = head.partition("(")[2]
    fields = tail.split()
    # fields[0] is field 3 (state); start time is field 22.
    return Stat(comm=comm, state=fields[0], ppid=int(fields[1]), start_time=int(fields[19]))


def stat(pid: int, proc: Path = PROC) -> Stat | None:
    """The process's stat, or None when it is gone."""
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def start_time(pid: int, proc: Path = PROC) -> int | None:
    st = stat(pid, proc)
    return st.start_time if st else None


def alive(pid: int | None, start: int | None, proc: Path = PROC) -> bool:
    """True if ``pid`` still runs and is the same process (same start time).

    A zombie counts as dead: it has already released its namespaces.
    """
    if not pid:
        return False
    st = stat(pid, proc)
    if st is None or st.state in ("Z", "X"):
        return False
    return start is None or st.start_time == start


def all_pids(proc: Path = PROC) -> list[int]:
    return [int(name) for name in os.listdir(proc) if name.isdigit()]


def cmdline(pid: int, proc: Path = PROC) -> list[str]:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def ns_inode(pid: int, kind: str, proc: Path = PROC) -> int | None:
    """The inode of the process's ``kind`` namespace (pid, net, mnt...), or None."""
    try:
        return os.stat(proc / str(pid) / "ns" / kind).st_ino
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def pids_in_namespace(pid: int, kind: str = "pid", proc: Path = PROC) -> list[int]:
    """Every live process sharing ``pid``'s ``kind`` namespace (``pid`` included)."""
    target = ns_inode(pid, kind, proc)
    if target is None:
        return []
    return sorted(p for p in all_pids(proc) if ns_inode(p, kind, proc) == target)


def pss_kib(pid: int, proc: Path = PROC) -> int:
    """Proportional set size in KiB: shared pages (libraries) are split between the
    processes that map them, so summing over a node does not count libc N times."""
    try:
        for line in (proc / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points(mountinfo: str) -> list[str]:
    """The mount points listed in a /proc/PID/mountinfo text (field 5)."""
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            points.append(_unescape(fields[4]))
    return points

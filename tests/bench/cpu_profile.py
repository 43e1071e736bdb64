"""Where the CPU goes during a benchmark window: CPU seconds per kind of process.

Every lab process is visible from the host's PID namespace, so one sampler reads
``/proc/<pid>/stat`` (user + system ticks) about every ``interval`` seconds and
keeps, per pid, the ticks used since the window opened (a process born inside the
window counts from zero; one that dies keeps what it had at its last sample, so a
sample interval of work can be lost per dying process). Processes are grouped by
what they are (``qemu``, ``libvirtd``, ``mariadbd``, ``rabbitmq``, each Haven
service, the cluster daemons): the question is which layer is eating the machine.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter

TICKS = os.sysconf("SC_CLK_TCK")
HAVEN_SERVICE = re.compile(r"haven (?:serve (\w[\w-]*)|(evacuator|compute-agent|agent)\b)")
KINDS = (  # first match wins: (kind, substring of the command line)
    ("qemu", "qemu-system"),
    ("libvirtd", "libvirtd"),
    ("virtlockd/virtlogd", "virtlo"),
    ("mariadbd", "mariadbd"),
    ("rabbitmqctl (rabbitmq-cluster's monitor)", "rabbitmqctl"),
    ("rabbitmq", "beam.smp"),
    ("OCF resource agents", "/resource.d/"),
    ("OCF resource agents", "agents/ocf/"),
    ("corosync", "corosync"),
    ("pacemaker", "pacemaker"),
    ("fencing/crm tools", "stonith"),
    ("fencing/crm tools", "crm_"),
    ("fencing/crm tools", "fence_"),
    ("bench (openstack CLI, mysql, virsh, nsenter)", "openstack"),
    ("bench (openstack CLI, mysql, virsh, nsenter)", "virsh"),
    ("bench (openstack CLI, mysql, virsh, nsenter)", "nsenter"),
    ("bench (openstack CLI, mysql, virsh, nsenter)", "mysql"),
    ("bench (openstack CLI, mysql, virsh, nsenter)", "evacuation.py"),
)


def kind_of(cmdline: str) -> str:
    found = HAVEN_SERVICE.search(cmdline)
    if found:
        return f"haven {found.group(1) or found.group(2)}"
    for kind, needle in KINDS:
        if needle in cmdline:
            return kind
    return "other"


def _ticks(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class CpuSampler:
    """``start()`` opens the window, ``stop()`` closes it and returns seconds per kind."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._base: dict[str, int] = {}
        self._used: dict[str, int] = {}
        self._kinds: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self.seconds = 0.0

    def _sample(self, first: bool) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            ticks = _ticks(pid)
            if ticks is None:
                continue
            if pid not in self._kinds:
                self._kinds[pid] = kind_of(_cmdline(pid))
                self._base[pid] = ticks if first else 0
            self._used[pid] = ticks - self._base[pid]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample(first=False)

    def start(self) -> None:
        self._began = time.monotonic()
        self._sample(first=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample(first=False)
        self.seconds = time.monotonic() - self._began
        per_kind: Counter[str] = Counter()
        for pid, used in self._used.items():
            per_kind[self._kinds[pid]] += used
        return {k: round(v / TICKS, 2) for k, v in per_kind.most_common() if v > 0}

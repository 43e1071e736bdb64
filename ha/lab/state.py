"""The lab's persisted state: what ``up`` built, so ``status``, faults, the power
switch and ``down`` work from other processes.

It lives in the lab directory (default /var/lib/haven-lab, or $HAVEN_LAB_DIR) as
``state.json``, written atomically (temp file + rename) under an flock, because the
CLI and the power-switch daemon both change it (a fence powers a node off while an
operator runs ``haven lab status``). Every step of ``up`` records what it made
*before* making the next thing, which is what lets ``down`` clean up a partial
``up``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LAB_DIR = Path("/var/lib/haven-lab")
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
SOCKET_FILE = "power.sock"
POWER_LOG = "power.log"


class NoLabError(LookupError):
    """No lab is set up in this lab directory."""


class UnknownNodeError(LookupError):
    """The lab has no node of that name."""


def default_lab_dir() -> Path:
    return Path(os.environ.get("HAVEN_LAB_DIR") or DEFAULT_LAB_DIR)


@dataclass
class NodeState:
    """One node: its plan (name, address, namespaces) and its current init process."""

    name: str
    nodeid: int
    address: str
    netns: str
    veth: str  # the bridge-side end, in the switch namespace: the node's "cable"
    init_pid: int | None = None
    init_start: int | None = None  # start time of init_pid, against PID reuse
    power: str = "off"  # "on" or "off", as the power switch last left it
    off_since: float | None = None  # wall-clock time of the last power-off


@dataclass
class LabState:
    lab_dir: str
    cluster_name: str
    subnet: str
    switch_ns: str
    bridge: str
    token_ms: int
    libvirt: bool
    fence_action: str
    nodes: dict[str, NodeState] = field(default_factory=dict)
    boot_delay: float = 20.0  # seconds a node stays dark after power-off (see power.py)
    power_pid: int | None = None
    power_start: int | None = None
    # Host directories up created as mount points (e.g. /var/lib/haven) and
    # whether up created /run/netns: down removes exactly these.
    created_dirs: list[str] = field(default_factory=list)
    created_run_netns: bool = False
    phase: str = "building"  # "building" until up finished, then "up"

    @property
    def path(self) -> Path:
        return Path(self.lab_dir)

    @property
    def socket_path(self) -> Path:
        return self.path / SOCKET_FILE

    def node(self, name: str) -> NodeState:
        try:
            return self.nodes[name]
        except KeyError:
            raise UnknownNodeError(f"no node {name!r} in the lab (nodes: "
                                   f"{', '.join(self.nodes) or 'none'})") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabState:
        data = dict(data)
        nodes = {name: NodeState(**node) for name, node in data.pop("nodes", {}).items()}
        return cls(nodes=nodes, **data)


def load(lab_dir: Path) -> LabState | None:
    """The lab's state, or None when no lab was ever (or is no longer) set up there."""
    try:
        return LabState.from_dict(json.loads((lab_dir / STATE_FILE).read_text()))
    except FileNotFoundError:
        return None


def save(state: LabState) -> None:
    path = state.path / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)


@contextmanager
def locked(lab_dir: Path) -> Iterator[None]:
    """Hold the lab's lock: one writer of state.json at a time, across processes."""
    lab_dir.mkdir(parents=True, exist_ok=True)
    with open(lab_dir / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def updating(lab_dir: Path) -> Iterator[LabState]:
    """Load the state under the lock, let the caller change it, save it back."""
    with locked(lab_dir):
        state = load(lab_dir)
        if state is None:
            raise NoLabError(f"no lab is up at {lab_dir} (start one: haven lab up)")
        yield state
        save(state)

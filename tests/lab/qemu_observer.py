"""Who runs which guest: every QEMU process on this machine, by instance, from /proc.

Why /proc of the host and not ``virsh list`` per node: all lab nodes share this
machine's kernel, so the host's /proc lists every process of every node -- a
frozen node (its processes SIGSTOPped, still holding their disks), a node cut
from the network, a node whose libvirtd does not answer. Asking each node's
libvirt skips exactly the nodes that matter (it cannot answer while frozen or
cut), and a stopped QEMU is still a QEMU: thawed, it writes to its disk again.

A QEMU process is named by its pid *and* start time (pids are recycled) and
belongs to the instances its command line names: libvirt passes the domain's
uuid (``-uuid``, Haven's instance id), its name (``-name guest=haven-<id>``) and
the disk (``.../<id>/disk`` in the shared instances directory). A copy of a
guest defined under another name and uuid still names the disk, so it still
counts as that instance.

:class:`Record` is the judge (pure: it is fed samples, so its verdicts are unit
tested on recorded samples); :class:`QemuObserver` is the thread that samples
/proc every ``interval`` seconds and feeds it. Two QEMU processes of one
instance in one sample is a double run, and fails the test that owns the
observer (:meth:`Record.assert_no_double`).
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_NAME = re.compile(rf"(?:^|,)guest=haven-({UUID})(?:,|$)")
_DISK = re.compile(rf"/({UUID})/disk(?![\w.-])")
_UUID_ONLY = re.compile(rf"^{UUID}$")


def instances_of(argv: list[str]) -> frozenset[str]:
    """The instances a process runs, from its argv: empty unless it is a QEMU system
    emulator; else every instance id its -uuid, -name and disk paths name."""
    if not argv or not os.path.basename(argv[0]).startswith(("qemu-system", "qemu-kvm")):
        return frozenset()
    found: set[str] = set()
    for flag, value in itertools.pairwise(argv):
        if flag == "-uuid" and _UUID_ONLY.match(value.lower()):
            found.add(value.lower())
        elif flag == "-name":
            found.update(m.group(1) for m in _NAME.finditer(value.lower()))
    for arg in argv[1:]:
        found.update(m.group(1) for m in _DISK.finditer(arg.lower()))
    return frozenset(found)


@dataclass(frozen=True)
class Qemu:
    """One QEMU process as one sample saw it."""

    pid: int
    start: int  # clock ticks after boot (/proc/PID/stat field 22): pid + start name it
    instances: frozenset[str]
    node: str  # the lab node whose PID namespace holds it ("host" or "?" otherwise)
    stopped: bool = False  # SIGSTOPped (state T): frozen, but alive and holding its disk

    @property
    def ident(self) -> tuple[int, int]:
        return (self.pid, self.start)


@dataclass(frozen=True)
class Sample:
    """Every QEMU process alive during one pass over /proc, started at ``at``
    (wall clock: the lab nodes share it, so it compares with fence times)."""

    at: float
    qemus: tuple[Qemu, ...]


@dataclass(frozen=True)
class Double:
    """One instance run by two (or more) QEMU processes in one sample."""

    at: float
    instance: str
    qemus: tuple[Qemu, ...]

    def __str__(self) -> str:
        shown = ", ".join(f"pid {q.pid} on {q.node}{' (stopped)' if q.stopped else ''}"
                          for q in self.qemus)
        when = time.strftime("%H:%M:%S", time.localtime(self.at))
        return f"instance {self.instance} run twice at {when} ({self.at:.2f}): {shown}"


@dataclass
class Life:
    """One QEMU process over the whole observation: where, when first and last seen."""

    pid: int
    start: int
    instances: frozenset[str]
    node: str
    first_seen: float
    last_seen: float
    seen_stopped: bool = False

    @property
    def ident(self) -> tuple[int, int]:
        return (self.pid, self.start)


@dataclass
class Record:
    """What the samples showed: each QEMU process's life and every double run."""

    samples: int = 0
    first_at: float | None = None
    last_at: float | None = None
    longest_gap: float = 0.0  # the longest time between two samples (reported, not judged)
    lives: dict[tuple[int, int], Life] = field(default_factory=dict)
    doubles: list[Double] = field(default_factory=list)
    last: Sample | None = None  # the newest sample
    # Instances a test runs twice on purpose, to see the observer catch it: their
    # doubles are kept apart (``planted_doubles``) instead of failing the run.
    planted: set[str] = field(default_factory=set)
    planted_doubles: list[Double] = field(default_factory=list)

    def add(self, sample: Sample) -> list[Double]:
        """Take one sample in; return the double runs it shows."""
        if self.last_at is not None:
            self.longest_gap = max(self.longest_gap, sample.at - self.last_at)
        if self.first_at is None:
            self.first_at = sample.at
        self.last_at, self.last = sample.at, sample
        self.samples += 1
        by_instance: dict[str, dict[tuple[int, int], Qemu]] = {}
        for q in sample.qemus:
            life = self.lives.get(q.ident)
            if life is None:
                life = self.lives[q.ident] = Life(q.pid, q.start, q.instances, q.node,
                                                  sample.at, sample.at)
            life.last_seen = sample.at
            life.seen_stopped |= q.stopped
            if life.node == "?":  # placed later than first seen (see Scanner.scan)
                life.node = q.node
            for instance in q.instances:
                by_instance.setdefault(instance, {})[q.ident] = q
        found = [Double(sample.at, instance, tuple(sorted(qs.values(), key=lambda q: q.pid)))
                 for instance, qs in sorted(by_instance.items()) if len(qs) > 1]
        self.doubles += [d for d in found if d.instance not in self.planted]
        self.planted_doubles += [d for d in found if d.instance in self.planted]
        return found

    def of(self, instance: str) -> list[Life]:
        """The QEMU processes that ran ``instance``, in the order they appeared."""
        return sorted((life for life in self.lives.values() if instance in life.instances),
                      key=lambda life: (life.first_seen, life.pid))

    def running(self, node: str | None = None) -> dict[str, list[Qemu]]:
        """Instance -> its QEMUs in the newest sample (on ``node`` only, if given)."""
        found: dict[str, list[Qemu]] = {}
        for q in self.last.qemus if self.last else ():
            if node is None or q.node == node:
                for instance in q.instances:
                    found.setdefault(instance, []).append(q)
        return found

    def assert_no_double(self) -> None:
        assert self.samples > 0, "the QEMU observer took no sample"
        assert not self.doubles, (
            f"{len(self.doubles)} sample(s) show an instance run by two QEMUs; first: "
            f"{self.doubles[0]}")


# ---- sampling /proc ---------------------------------------------------------------
def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 16)
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat(proc: Path, pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process, None when it is gone."""
    raw = _read(f"{proc}/{pid}/stat")
    if raw is None:
        return None
    fields = raw.decode(errors="replace").rpartition(")")[2].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _argv(proc: Path, pid: int) -> list[str]:
    raw = _read(f"{proc}/{pid}/cmdline") or b""
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


class Scanner:
    """One pass over /proc finds every live QEMU. Cheap enough for ten passes a second
    on a busy lab: a process is read in full (stat, cmdline) only when first seen and
    after each exec (its /proc/PID/exe changes); QEMUs are re-read for their state.
    A pid cannot be recycled between two passes (pids are handed out cyclically, and
    a full cycle takes far longer than a pass), and a QEMU's start time is checked
    on every pass anyway."""

    def __init__(self, node_of: Callable[[int], str], proc: Path = PROC) -> None:
        self.node_of, self.proc = node_of, proc
        self._known: dict[tuple[int, str | None], tuple[int, frozenset[str], str] | None] = {}

    def scan(self) -> Sample:
        at = time.time()
        found: list[Qemu] = []
        live: set[int] = set()
        for name in os.listdir(self.proc):
            if not name.isdigit():
                continue
            pid = int(name)
            live.add(pid)
            try:
                exe: str | None = os.readlink(f"{self.proc}/{pid}/exe")
            except OSError:
                exe = None  # a kernel thread, a zombie, or gone: runs no guest
            if exe is None:
                continue
            key = (pid, exe)
            if key not in self._known:
                self._known[key] = self._classify(pid)
            known = self._known[key]
            if known is None:
                continue
            start, instances, node = known
            st = _stat(self.proc, pid)
            if st is None or st[0] in ("Z", "X"):
                continue
            if st[1] != start:  # another process at this pid: read it afresh
                known = self._known[key] = self._classify(pid)
                if known is None:
                    continue
                start, instances, node = known
            if node == "?":  # not placeable at first sight (a rebooted node the lab
                node = self.node_of(pid)  # state did not name yet): ask again each scan
                self._known[key] = (start, instances, node)
            found.append(Qemu(pid, start, instances, node, stopped=st[0] in ("T", "t")))
        for gone in [k for k in self._known if k[0] not in live]:
            del self._known[gone]
        return Sample(at, tuple(found))

    def _classify(self, pid: int) -> tuple[int, frozenset[str], str] | None:
        st = _stat(self.proc, pid)
        if st is None:
            return None
        instances = instances_of(_argv(self.proc, pid))
        if not instances:
            return None
        return st[1], instances, self.node_of(pid)


class QemuObserver(threading.Thread):
    """Samples every QEMU on the machine every ``interval`` seconds until stopped,
    into :attr:`record`. Use as a context manager around what is being judged."""

    def __init__(self, node_of: Callable[[int], str] = lambda _pid: "?",
                 interval: float = 0.1, proc: Path = PROC) -> None:
        super().__init__(daemon=True, name="qemu-observer")
        self.scanner = Scanner(node_of, proc)
        self.interval = interval
        self.record = Record()
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                sample = self.scanner.scan()
                with self._lock:
                    self.record.add(sample)
                self._halt.wait(self.interval)
        except BaseException as exc:  # stop() reports it: a dead observer proves nothing
            self.error = exc

    def snapshot(self) -> Record:
        """A copy of the record so far (the thread goes on)."""
        with self._lock:
            return Record(self.record.samples, self.record.first_at, self.record.last_at,
                          self.record.longest_gap,
                          {k: Life(**vars(v)) for k, v in self.record.lives.items()},
                          list(self.record.doubles), self.record.last,
                          set(self.record.planted), list(self.record.planted_doubles))

    def plant(self, instance: str) -> None:
        """Judge ``instance`` apart: a test is about to run it twice on purpose."""
        with self._lock:
            self.record.planted.add(instance)

    def wait_sample(self, after: float, timeout: float = 30.0) -> None:
        """Until a sample begun after ``after`` (wall clock) is in the record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.record.last_at is not None and self.record.last_at > after:
                    return
            if self.error is not None or not self.is_alive():
                break
            time.sleep(self.interval / 2)
        raise AssertionError(f"the QEMU observer took no sample after {after} "
                             f"(error: {self.error!r})")

    def stop(self) -> Record:
        """Stop sampling; the final record. Raises if the observer itself failed."""
        self._halt.set()
        self.join(timeout=30)
        if self.error is not None:
            raise AssertionError(f"the QEMU observer failed: {self.error!r}") from self.error
        return self.record

    def __enter__(self) -> QemuObserver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def lab_node_namer(inits: Callable[[], Iterable[tuple[str, int | None]]],
                   proc: Path = PROC) -> Callable[[int], str]:
    """A ``node_of`` for :class:`QemuObserver`: the lab node whose init shares the
    process's PID namespace. ``inits`` lists (node name, init pid) as the lab state
    has them now (a rebooted node has a new init and a new namespace)."""
    def ns(pid: int) -> int | None:
        try:
            return os.stat(f"{proc}/{pid}/ns/pid").st_ino
        except OSError:
            return None

    host = ns(os.getpid())

    def node_of(pid: int) -> str:
        mine = ns(pid)
        if mine is None:
            return "?"
        if mine == host:
            return "host"
        for name, init in inits():
            if init and ns(init) == mine:
                return name
        return "?"
    return node_of

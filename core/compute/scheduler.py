"""Placement: choose a hypervisor for an instance and claim its resources.

Two halves:

* :class:`HostIndex` decides. It keeps every host's state in memory, ordered
  by a spreading weight (most free RAM and vCPU first, normalised by the
  fleet's largest host), with separate orders for normal and reserved hosts.
  A decision walks that order and returns the first host that passes the
  filters (enabled, up, RAM, vCPU, disk, anti-affinity, affinity), so it costs
  a few checks, not one per host. The index may be stale: that only costs a
  failed claim.
* :func:`claim` commits. It is one ``UPDATE`` that re-checks capacity and names
  the host's ``generation`` as read; if another scheduler (another API process,
  another Galera node) claimed in between, it matches no row, the host's state
  is reloaded and the next candidate is tried. Anti-affinity is made race-free
  the same way, with a generation on the server group.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from core.common.db import rowcount
from core.common.timeutil import now
from core.compute.models import ComputeService, Instance, ServerGroup


@dataclass(frozen=True)
class HostState:
    host: str
    enabled: bool
    up: bool
    reserved: bool
    vcpus: int
    memory_mb: int
    disk_gb: int
    vcpus_used: int = 0
    memory_mb_used: int = 0
    disk_gb_used: int = 0
    cpu_ratio: float = 4.0
    ram_ratio: float = 1.0
    reserved_memory_mb: int = 0
    generation: int = 0

    @property
    def free_ram_mb(self) -> float:
        return self.memory_mb * self.ram_ratio - self.reserved_memory_mb - self.memory_mb_used

    @property
    def free_vcpus(self) -> float:
        return self.vcpus * self.cpu_ratio - self.vcpus_used

    @property
    def free_disk_gb(self) -> int:
        return self.disk_gb - self.disk_gb_used

    @property
    def schedulable(self) -> bool:
        return self.enabled and self.up


@dataclass(frozen=True)
class Request:
    """What an instance needs, and where it may or may not go."""

    vcpus: int
    memory_mb: int
    disk_gb: int
    avoid_hosts: frozenset[str] = frozenset()  # anti-affinity members, failed targets
    only_hosts: frozenset[str] | None = None  # affinity, or an explicit target host
    use_reserved: bool = False  # evacuation: reserved hosts first, then normal ones


@dataclass
class FilterStats:
    """Why hosts were passed over (for the NoValidHost message)."""

    rejected: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


def host_passes(h: HostState, req: Request, stats: FilterStats | None = None) -> bool:
    """The filters, in Nova's order of cheapness."""
    reason = None
    if not h.enabled:
        reason = "disabled"
    elif not h.up:
        reason = "down"
    elif h.host in req.avoid_hosts:
        reason = "anti-affinity or excluded"
    elif req.only_hosts is not None and h.host not in req.only_hosts:
        reason = "affinity or requested host"
    elif h.free_ram_mb < req.memory_mb:
        reason = "RAM"
    elif h.free_vcpus < req.vcpus:
        reason = "vCPU"
    elif h.free_disk_gb < req.disk_gb:
        reason = "disk"
    if reason and stats is not None:
        stats.add(reason)
    return reason is None


class HostIndex:
    """Host states ordered by spreading weight, split into normal and reserved hosts."""

    def __init__(self, hosts: Iterable[HostState] = ()) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, HostState] = {}
        self._orders: dict[bool, list[tuple[float, str]]] = {False: [], True: []}
        self._max_ram = 1.0
        self._max_vcpus = 1.0
        for h in hosts:
            self.put(h)

    def _weight(self, h: HostState) -> float:
        # spread: hosts with the most free RAM and vCPUs first (Nova's default weighers)
        return h.free_ram_mb / self._max_ram + h.free_vcpus / self._max_vcpus

    def _key(self, h: HostState) -> tuple[float, str]:
        return (-self._weight(h), h.host)

    def put(self, h: HostState) -> None:
        with self._lock:
            old = self._states.get(h.host)
            if old is not None:
                order = self._orders[old.reserved]
                i = bisect.bisect_left(order, self._key(old))
                if i < len(order) and order[i][1] == old.host:
                    del order[i]
            self._states[h.host] = h
            ram, vcpus = h.memory_mb * h.ram_ratio, h.vcpus * h.cpu_ratio
            if ram > self._max_ram or vcpus > self._max_vcpus:
                # a bigger host changes every weight's scale: rebuild both orders
                self._max_ram, self._max_vcpus = max(self._max_ram, ram), max(self._max_vcpus,
                                                                              vcpus)
                self._reorder()
            elif h.schedulable:
                bisect.insort(self._orders[h.reserved], self._key(h))

    def _reorder(self) -> None:
        for reserved in (False, True):
            self._orders[reserved] = sorted(
                self._key(s) for s in self._states.values()
                if s.reserved == reserved and s.schedulable)

    def get(self, host: str) -> HostState | None:
        return self._states.get(host)

    def hosts(self) -> list[HostState]:
        return list(self._states.values())

    def candidates(self, req: Request, stats: FilterStats | None = None) -> Iterator[HostState]:
        """Hosts that pass the filters, best first (reserved ones first for evacuation)."""
        groups = (True, False) if req.use_reserved else (False,)
        for reserved in groups:
            for _, name in list(self._orders[reserved]):
                h = self._states[name]
                if h.reserved == reserved and host_passes(h, req, stats):
                    yield h
        if stats is not None:
            # Only reached when every candidate was refused. Disabled, down and
            # (outside evacuation) reserved hosts are not in the orders, so they never
            # met the filters: count them here, or a fleet that is all down reads as
            # "no hypervisors are registered".
            for h in list(self._states.values()):
                if not h.schedulable:
                    host_passes(h, req, stats)
                elif h.reserved and not req.use_reserved:
                    stats.add("reserved")

    def select(self, req: Request) -> HostState | None:
        return next(self.candidates(req), None)

    def consume(self, host: str, req: Request) -> None:
        """Account a successful claim locally (the database already has it)."""
        h = self._states.get(host)
        if h is not None:
            self.put(replace(h, vcpus_used=h.vcpus_used + req.vcpus,
                             memory_mb_used=h.memory_mb_used + req.memory_mb,
                             disk_gb_used=h.disk_gb_used + req.disk_gb,
                             generation=h.generation + 1))


def is_up(last_seen: float, forced_down: bool, service_down_time: float,
          at: float | None = None) -> bool:
    """A compute service is up unless forced down or its last heartbeat is too old."""
    return not forced_down and ((now() if at is None else at) - last_seen) <= service_down_time


def host_state(row: ComputeService, service_down_time: float, at: float | None = None
               ) -> HostState:
    return HostState(
        host=row.host, enabled=row.enabled,
        up=is_up(row.last_seen, row.forced_down, service_down_time, at),
        reserved=row.reserved, vcpus=row.vcpus, memory_mb=row.memory_mb, disk_gb=row.disk_gb,
        vcpus_used=row.vcpus_used, memory_mb_used=row.memory_mb_used,
        disk_gb_used=row.disk_gb_used, cpu_ratio=row.cpu_ratio, ram_ratio=row.ram_ratio,
        reserved_memory_mb=row.reserved_memory_mb, generation=row.generation)


def load_index(session: Session, service_down_time: float) -> HostIndex:
    rows = session.scalars(select(ComputeService)).all()
    return HostIndex(host_state(r, service_down_time) for r in rows)


class NoValidHost(Exception):
    """No host passes the filters (or every candidate was taken concurrently)."""


def _claim_statement() -> Any:
    """The claim UPDATE, built once with bound parameters (building this expression
    costs more than running it)."""
    cs = ComputeService
    v: Any = bindparam("want_vcpus")
    m: Any = bindparam("want_memory_mb")
    d: Any = bindparam("want_disk_gb")
    return (
        update(cs)
        .where(cs.host == bindparam("claim_host"), cs.generation == bindparam("read_generation"),
               cs.enabled.is_(True), cs.forced_down.is_(False),
               cs.vcpus_used + v <= cs.vcpus * cs.cpu_ratio,
               cs.memory_mb_used + m <= cs.memory_mb * cs.ram_ratio - cs.reserved_memory_mb,
               cs.disk_gb_used + d <= cs.disk_gb)
        .values(vcpus_used=cs.vcpus_used + v, memory_mb_used=cs.memory_mb_used + m,
                disk_gb_used=cs.disk_gb_used + d, generation=cs.generation + 1,
                updated_at=bindparam("claimed_at"))
    )


CLAIM = _claim_statement()


def claim(session: Session, instance: Instance, h: HostState, req: Request) -> bool:
    """Take ``req``'s resources on ``h`` if its generation is still ``h.generation``
    and it still has room. True when the claim (and ``instance.host``) is written."""
    won = rowcount(session.execute(CLAIM, {
        "claim_host": h.host, "read_generation": h.generation, "want_vcpus": req.vcpus,
        "want_memory_mb": req.memory_mb, "want_disk_gb": req.disk_gb, "claimed_at": now()}))
    if won != 1:
        return False
    instance.host = h.host
    instance.claimed_host = h.host
    instance.scheduled_at = now()
    return True


def release(session: Session, instance: Instance) -> None:
    """Give back ``instance``'s claim, once: ``claimed_host`` is cleared by a CAS."""
    host = instance.claimed_host
    if host is None:
        return
    cleared = rowcount(session.execute(
        update(Instance).where(Instance.id == instance.id, Instance.claimed_host == host)
        .values(claimed_host=None)))
    if cleared != 1:
        return
    cs = ComputeService
    session.execute(update(cs).where(cs.host == host).values(
        vcpus_used=cs.vcpus_used - instance.vcpus,
        memory_mb_used=cs.memory_mb_used - instance.memory_mb,
        disk_gb_used=cs.disk_gb_used - instance.root_gb,
        generation=cs.generation + 1, updated_at=now()))
    instance.claimed_host = None


def group_constraints(session: Session, group_id: str | None, exclude_instance: str
                      ) -> tuple[frozenset[str], frozenset[str] | None, int | None]:
    """(hosts to avoid, hosts allowed or None, group generation) for a server group."""
    if group_id is None:
        return frozenset(), None, None
    group = session.get(ServerGroup, group_id)
    if group is None:
        return frozenset(), None, None
    hosts = frozenset(h for h in session.scalars(
        select(Instance.host).where(Instance.server_group_id == group_id,
                                    Instance.deleted.is_(False), Instance.id != exclude_instance,
                                    Instance.host.is_not(None))) if h)
    avoid, only = group_rule(group.policy, hosts)
    return avoid, only, group.generation


def group_rule(policy: str, member_hosts: frozenset[str]
               ) -> tuple[frozenset[str], frozenset[str] | None]:
    """(hosts to avoid, hosts allowed or None) for a group of ``policy`` whose other
    members are on ``member_hosts``. Pure: the evacuation simulator uses it too."""
    if policy == "anti-affinity":
        return member_hosts, None
    if policy == "affinity" and member_hosts:
        return frozenset(), member_hosts
    return frozenset(), None


def bump_group(session: Session, group_id: str, generation: int) -> bool:
    """CAS the group's generation: two concurrent placements in one anti-affinity
    group serialise here, and the loser re-reads the members' hosts."""
    return rowcount(session.execute(
        update(ServerGroup).where(ServerGroup.id == group_id,
                                  ServerGroup.generation == generation)
        .values(generation=ServerGroup.generation + 1))) == 1


def describe(stats: FilterStats) -> str:
    if not stats.rejected:
        return "no hypervisors are registered"
    parts = ", ".join(f"{n} {reason}" for reason, n in sorted(stats.rejected.items()))
    return f"hosts rejected: {parts}"


"""Per-project quotas: limits, usage, and enforcement that holds under races.

Limits come from the ``quota`` section of the configuration (every project's
default) and from per-project overrides an administrator sets (rows of
``quota_limits``); -1 means unlimited. Usage is never stored: it is counted
from the resources themselves (Nova's "count resource usage" since Pike), so
it cannot drift, and an evacuation or a rebuild, which create no new rows,
are never counted twice.

Enforcement must hold when two API processes (or two Galera nodes) create at
quota-1 at the same moment. :meth:`Quotas.enforce` runs inside the caller's
transaction, before the caller inserts the new resource, and first writes the
project's row of ``quota_locks`` (an upsert that bumps its generation). That
write serialises every enforcing transaction of the project:

* InnoDB: the row lock is held until commit, so the second transaction waits,
  then counts (READ COMMITTED: a fresh read) and sees the first one's insert.
* Galera: two nodes writing the same row conflict at certification; the loser
  gets a deadlock error, which the request layer retries from the start (it
  then sees the winner's insert) or answers 503, never a 500.
* SQLite: the write takes the database's write lock; a transaction whose
  snapshot is older than another's commit gets "database is locked" and is
  retried from the start.

Services own their resources: each registers the counters of its resources
(``Counter``), so this module reads no service's tables and imports no
service. Each service renders :class:`QuotaExceeded` its own way (Nova 403,
Neutron 409 OverQuota, Glance 413).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import BigInteger, String, delete, select
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.common.config import QuotaConfig
from core.common.db import CommonTable

UNLIMITED = -1
# Resource names, as the quota APIs spell them (Nova, Neutron's singulars are mapped
# by their routes; Glance's are Keystone unified-limit names).
INSTANCES, CORES, RAM = "instances", "cores", "ram"
NETWORKS, PORTS = "networks", "ports"
SECURITY_GROUPS, SECURITY_GROUP_RULES = "security_groups", "security_group_rules"
ROUTERS, FLOATINGIPS = "routers", "floatingips"
IMAGES, IMAGE_SIZE = "image_count_total", "image_size_total"
KEY_PAIRS = "key_pairs"  # Nova's per-user resource: its counter is the service's concern
RESOURCES = (INSTANCES, CORES, RAM, NETWORKS, PORTS, SECURITY_GROUPS, SECURITY_GROUP_RULES,
             ROUTERS, FLOATINGIPS, IMAGES, IMAGE_SIZE, KEY_PAIRS)

Counter = Callable[[Session, str], int]
"""How much of one resource a project uses now, read in the caller's transaction."""


class QuotaLimit(CommonTable):
    """An administrator's limit for one resource of one project (overrides the default)."""

    __tablename__ = "quota_limits"
    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource: Mapped[str] = mapped_column(String(64), primary_key=True)
    hard_limit: Mapped[int] = mapped_column(BigInteger)


class QuotaLock(CommonTable):
    """One row per project, written first by every enforcing transaction: the point
    where concurrent creations in one project queue up (see the module docstring)."""

    __tablename__ = "quota_locks"
    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


@dataclass(frozen=True)
class Over:
    """One resource a request would take past its limit."""

    resource: str
    requested: int
    used: int
    limit: int


class QuotaExceeded(Exception):
    """The request would exceed at least one limit; ``overs`` says which, in the
    order the request named them."""

    def __init__(self, project_id: str, overs: list[Over]) -> None:
        super().__init__(f"project {project_id} over quota for "
                         f"{', '.join(o.resource for o in overs)}")
        self.project_id = project_id
        self.overs = overs


class LimitBelowUsage(ValueError):
    """A new limit lower than what the project already uses (refused unless forced)."""

    def __init__(self, resource: str, limit: int, used: int) -> None:
        super().__init__(f"Quota limit {limit} for {resource} must be greater than or equal "
                         f"to already used and reserved {used}.")
        self.resource = resource
        self.limit = limit
        self.used = used


def defaults(cfg: QuotaConfig) -> dict[str, int]:
    """Every resource's default limit, from the configuration."""
    return {INSTANCES: cfg.instances, CORES: cfg.cores, RAM: cfg.ram,
            NETWORKS: cfg.networks, PORTS: cfg.ports, SECURITY_GROUPS: cfg.security_groups,
            SECURITY_GROUP_RULES: cfg.security_group_rules, ROUTERS: cfg.routers,
            FLOATINGIPS: cfg.floatingips, IMAGES: cfg.image_count_total,
            IMAGE_SIZE: cfg.image_size_total, KEY_PAIRS: cfg.key_pairs}


def lock_project(sess: Session, project_id: str) -> None:
    """Upsert the project's lock row, bumping its generation: from here to the end of
    the transaction, no other enforcing transaction of the project proceeds (or, on
    Galera, commits)."""
    dialect = sess.get_bind().dialect.name
    if dialect in ("mysql", "mariadb"):
        stmt = mysql.insert(QuotaLock).values(project_id=project_id, generation=1)
        sess.execute(stmt.on_duplicate_key_update(generation=QuotaLock.generation + 1))
    elif dialect == "sqlite":
        lite = sqlite.insert(QuotaLock).values(project_id=project_id, generation=1)
        sess.execute(lite.on_conflict_do_update(
            index_elements=[QuotaLock.project_id],
            set_={"generation": QuotaLock.generation + 1}))
    else:  # a bug: enforcement without serialisation would let races through
        raise RuntimeError(f"quota locking is not implemented for {dialect}")


class Quotas:
    """The quotas of the resources one service owns: its counters, and the limits."""

    def __init__(self, cfg: QuotaConfig, counters: Mapping[str, Counter]) -> None:
        unknown = set(counters) - set(RESOURCES)
        if unknown:
            raise ValueError(f"unknown quota resources {sorted(unknown)}")
        self.defaults = defaults(cfg)
        self.counters = dict(counters)

    @property
    def resources(self) -> tuple[str, ...]:
        return tuple(r for r in RESOURCES if r in self.counters)

    def limits(self, sess: Session, project_id: str,
               resources: Iterable[str] | None = None) -> dict[str, int]:
        """This service's limits for the project: its overrides, else the defaults."""
        names = self.resources if resources is None else tuple(resources)
        out = {r: self.defaults[r] for r in names}
        for row in sess.scalars(select(QuotaLimit).where(
                QuotaLimit.project_id == project_id, QuotaLimit.resource.in_(names))):
            out[row.resource] = int(row.hard_limit)
        return out

    def usage(self, sess: Session, project_id: str,
              resources: Iterable[str] | None = None) -> dict[str, int]:
        return {r: int(self.counters[r](sess, project_id))
                for r in (self.resources if resources is None else resources)}

    def overridden_projects(self, sess: Session) -> list[str]:
        """Projects with at least one limit of this service set (Neutron's quota list)."""
        return sorted(set(sess.scalars(select(QuotaLimit.project_id).where(
            QuotaLimit.resource.in_(self.resources)))))

    def enforce(self, sess: Session, project_id: str | None,
                deltas: Mapping[str, int]) -> None:
        """Raise QuotaExceeded unless the project may take ``deltas`` more.

        Call it in the transaction that then inserts the resource, before the insert:
        it serialises the project's enforcing transactions (see the module docstring).
        A resource without a project (the cloud's own, made at bootstrap) has no quota.
        """
        if project_id is None or not any(v > 0 for v in deltas.values()):
            return
        unknown = [r for r in deltas if r not in self.counters]
        if unknown:
            raise ValueError(f"no counter for quota resources {unknown}")  # a bug
        wanted = [r for r, v in deltas.items() if v > 0]
        if all(v == UNLIMITED for v in self.limits(sess, project_id, wanted).values()):
            return  # nothing to protect: no lock, no contention (Galera conflicts)
        lock_project(sess, project_id)
        limits = self.limits(sess, project_id, wanted)  # again: after the lock, current
        wanted = [r for r in wanted if limits[r] != UNLIMITED]
        used = self.usage(sess, project_id, wanted)
        overs = [Over(r, deltas[r], used[r], limits[r]) for r in wanted
                 if used[r] + deltas[r] > limits[r]]
        if overs:
            raise QuotaExceeded(project_id, overs)

    def set_limits(self, sess: Session, project_id: str, values: Mapping[str, int],
                   force: bool = True) -> None:
        """Store the project's limits. Unless ``force``, a limit below current usage is
        refused (LimitBelowUsage), as Nova and Neutron's ``check_limit`` do."""
        for resource, value in values.items():
            if resource not in self.counters:
                raise ValueError(f"unknown quota resource {resource}")  # callers check names
            if value < UNLIMITED:
                raise ValueError(f"quota limit for {resource} must be >= -1, got {value}")
        if not force:
            lock_project(sess, project_id)
            used = self.usage(sess, project_id, [r for r, v in values.items() if v >= 0])
            for resource, count in used.items():
                if values[resource] < count:
                    raise LimitBelowUsage(resource, values[resource], count)
        for resource, value in values.items():
            sess.merge(QuotaLimit(project_id=project_id, resource=resource, hard_limit=value))
        sess.flush()

    def reset(self, sess: Session, project_id: str) -> None:
        """Forget the project's limits of this service: the defaults apply again."""
        sess.execute(delete(QuotaLimit).where(QuotaLimit.project_id == project_id,
                                              QuotaLimit.resource.in_(self.resources)))

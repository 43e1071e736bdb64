"""Placement and claims: where an instance goes, and taking the room for it there.

One module for the two callers that place instances, so they claim the same way:

* create (:func:`schedule`): one transaction per claim attempt, on the API process's
  cached host index (:meth:`ComputeContext.host_index`);
* evacuate (:func:`claim_for_evacuation`): every attempt in the caller's transaction
  (a batch evacuation is one transaction), on a freshly read index.

Both make one attempt with :func:`try_claim`: the best candidate of the index
(``core.compute.scheduler``'s filters and weights) is claimed with a
compare-and-swap on its generation; a claim lost to a concurrent placement
refreshes that host in the index and the caller tries again. Only a fleet with no
room left answers "no valid host".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.common.db import rowcount
from core.common.timeutil import now
from core.compute import errors, scheduler, states
from core.compute.api import ComputeContext
from core.compute.models import ComputeService, Instance, ServerGroup

LOG = logging.getLogger(__name__)
NO_VALID_HOST = "No valid host was found. There are not enough hosts available."
# Claims an instance may lose to other schedulers before it goes to ERROR. Each loss
# means another instance was placed, so this only bounds a pathological pile-up.
MAX_CLAIM_ATTEMPTS = 30
GROUP_LOCK_ATTEMPTS = 50


class InstanceMoved(Exception):
    """The instance left ``scheduling`` (deleted) while a host was being claimed."""


@dataclass(frozen=True)
class Attempt:
    """One claim attempt: ``claimed`` on ``host``; ``lost`` ``host`` to a concurrent
    placement (try again); or ``none``: no host passes (``stats`` says why)."""

    outcome: Literal["claimed", "lost", "none"]
    host: str | None
    stats: scheduler.FilterStats


def lock_group(sess: Session, group_id: str) -> None:
    """Bump the server group's generation before placing a member: concurrent
    placements in one group then serialise on that row, so each sees the
    others' hosts (anti-affinity holds under races)."""
    for _ in range(GROUP_LOCK_ATTEMPTS):
        group = sess.get(ServerGroup, group_id)
        if group is None:
            return
        sess.refresh(group)
        if scheduler.bump_group(sess, group.id, group.generation):
            return
    raise errors.GroupBusy(f"Server group {group_id} is too busy; retry.")


def request_for(sess: Session, inst: Instance, avoid: frozenset[str] = frozenset(),
                only: frozenset[str] | None = None, use_reserved: bool = False
                ) -> scheduler.Request:
    """What ``inst`` needs, with its server group's constraints added to ``avoid`` and,
    when ``only`` is None, the group's affinity as the hosts allowed."""
    group_avoid, group_only, _ = scheduler.group_constraints(sess, inst.server_group_id,
                                                             inst.id)
    return scheduler.Request(inst.vcpus, inst.memory_mb, inst.root_gb,
                             avoid_hosts=group_avoid | avoid,
                             only_hosts=only if only is not None else group_only,
                             use_reserved=use_reserved)


def try_claim(sess: Session, inst: Instance, req: scheduler.Request,
              index: scheduler.HostIndex, service_down_time: float) -> Attempt:
    """Claim the best host of ``index`` for ``req`` in ``sess``'s transaction.

    On success ``inst.host``/``claimed_host`` name the host and the index accounts
    the claim; a lost claim reloads that host's row into the index (deleted since:
    never offered again)."""
    stats = scheduler.FilterStats()
    h = next(index.candidates(req, stats), None)
    if h is None:
        return Attempt("none", None, stats)
    if scheduler.claim(sess, inst, h, req):
        index.consume(h.host, req)
        return Attempt("claimed", h.host, stats)
    row = sess.scalars(select(ComputeService).where(ComputeService.host == h.host)).first()
    if row is not None:
        sess.refresh(row)
        index.put(scheduler.host_state(row, service_down_time))
    else:
        index.put(replace(h, enabled=False))
    return Attempt("lost", h.host, stats)


# ---- create --------------------------------------------------------------------------
def no_valid_host(sess: Session, instance_id: str, fault: str = NO_VALID_HOST) -> None:
    """ERROR with Nova's fault, by CAS: only an instance still being scheduled."""
    sess.execute(update(Instance).where(Instance.id == instance_id,
                                        Instance.task_state == states.SCHEDULING)
                 .values(vm_state=states.ERROR, task_state=None, fault=fault,
                         updated_at=now()))


def fail_scheduling(ctx: ComputeContext, instance_id: str, message: str) -> None:
    """Put an instance still being scheduled in ERROR with ``message`` (never raises:
    called when something already failed)."""
    try:
        ctx.db.run_in_transaction(lambda sess: no_valid_host(sess, instance_id, message))
    except Exception:  # the database is what failed: nothing more to do here
        LOG.exception("could not mark %s as failed", instance_id)


def schedule(ctx: ComputeContext, instance_id: str) -> str | None:
    """Claim a host for a new instance and mark it spawning there; None (and the
    instance in ERROR) if none fits, or if it was deleted meanwhile.

    One transaction per claim attempt. A lost claim (another scheduler took
    the host first) ends its transaction at once and the next attempt starts
    afresh: on InnoDB, an UPDATE that waited for the winner's row lock keeps
    that lock until its transaction ends even though it then matched
    nothing, so a scheduler that went on to the next host in the same
    transaction held locks on every host it lost, and three of them could
    deadlock each other (seen with three API processes on MariaDB).
    """
    down_time = ctx.cfg.compute.service_down_time

    def attempt(sess: Session, max_age: float) -> tuple[str, str | None]:
        """("placed"|"done", host), ("lost", host), ("stale", None) or ("none", None)."""
        inst = sess.get(Instance, instance_id)
        if inst is None or inst.task_state != states.SCHEDULING:
            return "done", inst.host if inst else None
        if inst.server_group_id:
            lock_group(sess, inst.server_group_id)
        req = request_for(sess, inst)
        index = ctx.host_index(sess, max_age)
        tried = try_claim(sess, inst, req, index, down_time)
        if tried.outcome == "claimed":
            # the instance row too moves by compare-and-swap: a delete that came
            # in meanwhile wins, and this claim is rolled back with the transaction
            moved = rowcount(sess.execute(
                update(Instance).where(Instance.id == inst.id,
                                       Instance.task_state == states.SCHEDULING)
                .values(host=tried.host, claimed_host=tried.host, scheduled_at=now(),
                        task_state=states.SPAWNING, updated_at=now())))
            if moved != 1:
                raise InstanceMoved(inst.id)
            sess.expire(inst)
            return "placed", tried.host
        if tried.outcome == "lost":
            return "lost", tried.host
        if max_age > 0.0:
            return "stale", None  # the index may be old: decide again on a fresh one
        LOG.info("no valid host for %s: %s", inst.id, scheduler.describe(tried.stats))
        no_valid_host(sess, inst.id)
        return "none", None

    max_age = 1.0
    for _ in range(MAX_CLAIM_ATTEMPTS):
        try:
            outcome, host = ctx.db.run_in_transaction(partial(attempt, max_age=max_age))
        except InstanceMoved:
            return None  # deleted while being placed: its claim was rolled back
        if outcome in ("placed", "done", "none"):
            return host
        # "lost": another scheduler made progress; the index knows that host's new state
        max_age = 0.0 if outcome == "stale" else 1.0

    def give_up(sess: Session) -> str | None:
        inst = sess.get(Instance, instance_id)
        if inst is None or inst.task_state != states.SCHEDULING:
            return inst.host if inst else None
        LOG.warning("no host for %s after %d lost claims", inst.id, MAX_CLAIM_ATTEMPTS)
        no_valid_host(sess, inst.id)
        return None

    return ctx.db.run_in_transaction(give_up)


# ---- evacuate ------------------------------------------------------------------------
def claim_for_evacuation(ctx: ComputeContext, sess: Session, inst: Instance,
                         req: scheduler.Request) -> str:
    """Claim the best host for ``req`` in the caller's transaction. A claim lost to a
    concurrent placement (a create, or an evacuation from another host) reads the
    hosts again and retries; only a fleet with no room left gives "No valid host"
    (:class:`errors.NoValidHost`), which the evacuation controller does not retry."""
    down_time = ctx.cfg.compute.service_down_time
    for _ in range(MAX_CLAIM_ATTEMPTS):
        tried = try_claim(sess, inst, req, scheduler.load_index(sess, down_time), down_time)
        if tried.outcome == "claimed" and tried.host is not None:
            return tried.host
        if tried.outcome == "none":
            raise errors.NoValidHost(f"No valid host to evacuate instance {inst.id} to "
                                     f"({scheduler.describe(tried.stats)}).")
    raise errors.ClaimsLost(f"Every host claim for instance {inst.id} was lost to "
                            "concurrent placements; retry.")

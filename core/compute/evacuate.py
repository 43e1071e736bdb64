"""The API side of evacuation: move an instance of a dead host to another one.

Stricter than Nova: an instance is evacuated only when its host's compute service
is *forced down* (``core.compute.evacuation_rule``); a stale heartbeat is not
enough, and a host without a service row is refused. Fencing is the evacuation
controller's business (ha/evacuator), which forces the service down once the
fence is confirmed; this call is the mechanism it uses.

The move is one transaction: the source's claim is released, a host is claimed
(reserved hosts first, anti-affinity kept, a claim lost to a concurrent placement
retried on fresh host state), a migration record is left as the tombstone the source
host reads when it returns, and the instance is marked ``rebuilding`` on its new host
with a compare-and-swap.

``evacuate_servers`` moves many instances of one dead host in one transaction: the
evacuation controller's way (``POST /v2.1/os-hosts/<host>/evacuate``). One at a time,
twenty evacuations of one host queued on that host's claim (each its own request,
token check and commit): 1.1 s of a 12 s evacuation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.common.db import rowcount
from core.common.faults import Fault
from core.common.timeutil import now
from core.compute import errors, placement, scheduler, states
from core.compute.api import ComputeContext
from core.compute.evacuation_rule import (
    EVACUABLE,
    evacuable,
    may_evacuate_from,
    not_evacuable,
    placement_request,
    refusal,
    state_after,
)
from core.compute.models import ComputeService, Instance, Migration


def evacuate_instance(ctx: ComputeContext, sess: Session, inst: Instance,
                      target: str | None) -> str:
    """Move ``inst`` off its (down) host; returns the new host. Raises the typed
    refusals of :mod:`core.compute.errors` (409, 400; 503 when every claim was lost)."""
    source = inst.host
    if source is None:
        raise errors.NotOnSource(f"Instance {inst.id} has no host to evacuate from.")
    check_source(sess, source)
    if not evacuable(inst.vm_state, inst.task_state):
        raise errors.NotEvacuable(not_evacuable(inst.id, inst.vm_state, inst.task_state))
    if target is not None and target == source:
        raise errors.BadTarget("The target host is the instance's own host.")
    # Compare-and-swap on the row as read: of two concurrent evacuations of one
    # instance, exactly one goes on (the other gets 409), so it is never placed twice.
    ts = now()
    won = rowcount(sess.execute(
        update(Instance).where(Instance.id == inst.id, Instance.host == source,
                               Instance.updated_at == inst.updated_at,
                               Instance.vm_state.in_(EVACUABLE))
        .values(task_state=states.REBUILDING, updated_at=ts)))
    if won != 1:
        raise errors.InUse(f"Instance {inst.id} changed while being evacuated; not moved.")
    sess.refresh(inst)
    if inst.server_group_id:
        placement.lock_group(sess, inst.server_group_id)  # group members one at a time
    previous_vm = inst.vm_state
    # Release before reading the hosts: its UPDATE of the source's row serialises the
    # evacuations of one dead host (the controller calls them in parallel), so each
    # reads the hosts after its predecessor's claim committed and none loses its
    # claim to a sibling, or reads "no valid host" while there is room.
    scheduler.release(sess, inst)
    avoid, only, _ = scheduler.group_constraints(sess, inst.server_group_id, inst.id)
    req = placement_request(inst.vcpus, inst.memory_mb, inst.root_gb, source, avoid, only,
                            target)
    chosen = placement.claim_for_evacuation(ctx, sess, inst, req)
    sess.add(Migration(instance_id=inst.id, source_host=source, dest_host=chosen,
                       kind="evacuation", status="accepted", created_at=ts, updated_at=ts))
    inst.vm_state = state_after(previous_vm)
    inst.task_state = states.REBUILDING
    inst.power_state = states.NOSTATE
    inst.fault = None
    inst.updated_at = ts
    sess.flush()
    return chosen


def check_source(sess: Session, host: str) -> None:
    """409 (``source_not_down``) unless ``host``'s compute service exists and is
    forced down."""
    svc = sess.scalars(select(ComputeService).where(ComputeService.host == host)).first()
    if not may_evacuate_from(svc):
        raise errors.SourceNotDown(refusal(host))


def evacuate_servers(ctx: ComputeContext, sess: Session, host: str, ids: Sequence[str],
                     load: Callable[[str], Instance]) -> tuple[list[dict[str, Any]],
                                                             list[Instance]]:
    """Evacuate the servers ``ids`` of ``host`` in the caller's transaction: one result
    per server, in order (its new host, or the error a single evacuate would have
    answered, with its :class:`errors.ErrorCode` as ``type``), and the instances moved,
    to nudge once committed.

    A server that cannot be moved must leave no trace, and savepoints are not to be
    trusted on every backend (SQLite's driver commits an outermost RELEASE): the work
    so far is rolled back and the batch run again without it. Failures are rare (a
    fleet out of room), so the rerun costs little.

    A source host whose service is not forced down refuses the whole request (409)."""
    check_source(sess, host)
    refused: dict[str, Fault] = {}
    while True:
        moved: list[tuple[Instance, str]] = []
        failed = False
        for server_id in ids:
            if server_id in refused:
                continue
            try:
                inst = load(server_id)
                if inst.host != host:
                    raise errors.NotOnSource(f"Instance {server_id} is on {inst.host}, "
                                             f"not {host}.")
                moved.append((inst, evacuate_instance(ctx, sess, inst, None)))
            except Fault as exc:
                refused[server_id] = exc
                failed = True
                break
        if not failed:
            break
        sess.rollback()
    chosen = {inst.id: target for inst, target in moved}
    results = [{"server_id": i, "host": chosen[i]} if i in chosen else
               {"server_id": i, "error": {"code": refused[i].status,
                                          "type": errors.code_of(refused[i]).value,
                                          "message": refused[i].message}} for i in ids]
    return results, [inst for inst, _ in moved]

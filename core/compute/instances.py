"""An instance row as the server routes use it: loaded under policy, its metadata, its
state moved by compare-and-swap, its host's agent nudged.

Shared by :mod:`core.compute.servers`, :mod:`core.compute.server_metadata` and
:mod:`core.compute.server_actions`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.common import policy
from core.common.db import rowcount
from core.common.faults import Conflict, Forbidden, NotFound
from core.common.timeutil import now
from core.common.wsgi import auth, session
from core.compute import messages
from core.compute.api import ComputeContext
from core.compute.models import Instance, InstanceMetadata


def load_server(instance_id: str, write: bool = False) -> Instance:
    """The caller's server (404 if it cannot see it; 403 if it may see, not change it)."""
    inst = session().get(Instance, instance_id)
    target = {"project_id": inst.project_id} if inst else {}
    action = "compute:servers:write" if write else "compute:servers:read"
    if inst is None or inst.deleted or not policy.allowed(auth(), action, target):
        if inst is not None and not inst.deleted and write and policy.allowed(
                auth(), "compute:servers:read", target):
            raise Forbidden(f"Policy does not allow {action} on server {instance_id}.")
        raise NotFound(f"Instance {instance_id} could not be found.")
    return inst


def metadata_of(sess: Session, instance_id: str) -> dict[str, str]:
    return {m.key: m.value for m in sess.scalars(
        select(InstanceMetadata).where(InstanceMetadata.instance_id == instance_id))}


def nudge(ctx: ComputeContext, inst: Instance) -> None:
    """Tell the instance's host to look at it (:func:`core.compute.messages.nudge`)."""
    messages.nudge(ctx.bus, inst.host, inst.id)


def transition(sess: Session, inst: Instance, expect_vm: tuple[str, ...],
               expect_task: tuple[str | None, ...], **values: Any) -> None:
    """Compare-and-swap the instance's states; 409 if someone else moved it first."""
    query = update(Instance).where(Instance.id == inst.id, Instance.vm_state.in_(expect_vm))
    tasks = [t for t in expect_task if t is not None]
    if None in expect_task:
        query = query.where((Instance.task_state.in_(tasks)) | Instance.task_state.is_(None))
    else:
        query = query.where(Instance.task_state.in_(tasks))
    if rowcount(sess.execute(query.values(updated_at=now(), **values))) != 1:
        sess.refresh(inst)
        raise Conflict(f"Cannot perform this action on instance {inst.id} while it is in "
                       f"vm_state {inst.vm_state} and task_state {inst.task_state}.")
    sess.refresh(inst)

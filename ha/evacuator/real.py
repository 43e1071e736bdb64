"""The real :class:`~ha.evacuator.env.EvacuationEnv`: Pacemaker, the Haven database and
the compute API.

* cluster: ``crm_mon --output-as=xml`` and ``stonith_admin --history`` run on this
  node (Pacemaker runs the controller on a cluster node), parsed by :mod:`ha.crm`;
* compute services, instances and the records: the Haven database (Galera in a
  cluster), one short transaction per call, every record update a single
  ``UPDATE ... WHERE state = :expected`` (the compare-and-swap);
* the actions (disable, enable, force down, evacuate): the compute API, as the
  service user, so they go through the same rules as an operator's calls (the
  evacuate action refuses a host whose service is up, and places the instance
  with the scheduler's claims).
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.common.clients import ServiceCallError, ServiceClients
from core.common.config import HavenConfig
from core.common.db import Database, rowcount
from core.compute.errors import ErrorCode
from core.compute.models import ComputeService, Instance, InstanceMetadata, Migration
from ha import crm
from ha.evacuator import fence_history
from ha.evacuator.env import (
    Conflict,
    EvacuateError,
    EventRecord,
    EventState,
    FenceEvent,
    InstanceRecord,
    InstanceState,
    InstanceStatus,
    InstanceView,
    NodeState,
    NoValidHost,
    ServiceView,
    TransientError,
)
from ha.evacuator.models import (
    EvacuationEvent,
    EvacuationInstance,
    event_record,
    event_values,
    instance_record,
    instance_row,
    instance_values,
)

LOG = logging.getLogger("haven.evacuator")
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
EVACUATE_BATCH = 100  # servers per evacuate request (the API takes up to 1000)


# What each of the compute API's refusal codes (core/compute/errors.py) means to the
# controller: no room (final, not retried), a conflict (the instance moved, changed or
# went away: looked at again, adopted if it left its source, else failed with an alert),
# or transient (retried with backoff); None: read the HTTP status. Every code is here
# (tests/unit/test_evacuator_error_codes.py holds it so).
CODE_ERRORS: dict[ErrorCode, type[EvacuateError] | None] = {
    ErrorCode.NO_VALID_HOST: NoValidHost,
    ErrorCode.CLAIMS_LOST: TransientError,
    ErrorCode.IN_USE: Conflict,
    ErrorCode.NOT_EVACUABLE: Conflict,
    ErrorCode.NOT_ON_SOURCE: Conflict,
    ErrorCode.SOURCE_NOT_DOWN: Conflict,
    ErrorCode.BAD_TARGET: Conflict,
    ErrorCode.GROUP_BUSY: Conflict,
    ErrorCode.NOT_FOUND: Conflict,
    ErrorCode.FORBIDDEN: Conflict,
    ErrorCode.UNEXPECTED: None,
}


def status_error(status: int | None, text: str) -> EvacuateError:
    """An error the compute API gave without a code (a refused request as a whole, or
    an older API): by its HTTP status alone, never its text. A 409, 400 or 404 is a
    conflict; anything else (5xx, no answer) transient."""
    if status in (400, 404, 409):
        return Conflict(text)
    return TransientError(text)


def call_error(status: int | None, text: str, code: str | None = None) -> EvacuateError:
    """What a compute API error means to the controller: by its refusal code when it
    has one (:class:`core.compute.errors.ErrorCode`), else by its status. An unknown
    code (a newer API) is read by its status too."""
    try:
        kind = CODE_ERRORS[ErrorCode(code)] if code is not None else None
    except ValueError:
        kind = None
    return status_error(status, text) if kind is None else kind(text)


COMPUTE_HEADERS = {"OpenStack-API-Version": "compute 2.25",
                   "X-OpenStack-Nova-API-Version": "2.25"}


def run_local(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)


def node_states(view: crm.ClusterView) -> dict[str, NodeState]:
    states = {}
    for name, nv in view.nodes.items():
        if nv.online:
            states[name] = NodeState.ONLINE
        elif nv.unclean:
            states[name] = NodeState.UNCLEAN
        else:
            states[name] = NodeState.OFFLINE
    return states


class RealEnv:
    """One per controller process; every call reads fresh facts (no caching here:
    the controller takes one view per iteration)."""

    def __init__(self, cfg: HavenConfig, db: Database, clients: ServiceClients,
                 runner: Runner = run_local, alert_sink: Callable[[str], None] | None = None,
                 ) -> None:
        self.cfg = cfg
        self.db = db
        self.clients = clients
        self.run = runner
        self.alert_sink = alert_sink

    # ---- clock and output ----------------------------------------------------------
    def now(self) -> float:
        return time.time()

    def log(self, message: str) -> None:
        LOG.info("%s", message)

    def alert(self, message: str) -> None:
        LOG.error("ALERT: %s", message)
        if self.alert_sink is not None:
            self.alert_sink(message)

    # ---- cluster ---------------------------------------------------------------------
    def nodes(self) -> Mapping[str, NodeState]:
        result = self.run(["crm_mon", "-1", "--output-as=xml"])
        if result.returncode != 0:
            raise TransientError(f"crm_mon failed: {result.stderr.strip()[-200:]}")
        return node_states(crm.parse_crm_mon(result.stdout))

    def fence_events(self, node: str) -> Sequence[FenceEvent]:
        result = self.run(["stonith_admin", "--history", node, "--verbose", "--output-as=xml"])
        if result.returncode != 0:
            raise TransientError(f"stonith_admin failed: {result.stderr.strip()[-200:]}")
        return fence_history.fence_events(result.stdout, node, self.log)

    # ---- compute: reads ------------------------------------------------------------
    def services(self) -> Sequence[ServiceView]:
        down_time = self.cfg.compute.service_down_time
        now = self.now()

        def unit(sess: Session) -> list[ServiceView]:
            return [ServiceView(host=s.host, enabled=s.enabled, disabled_reason=s.disabled_reason,
                                forced_down=s.forced_down, reserved=s.reserved,
                                last_heartbeat=s.last_seen,
                                alive=now - s.last_seen <= down_time)
                    for s in sess.scalars(select(ComputeService))]
        return self.db.run_in_transaction(unit)

    def instances_on(self, host: str) -> Sequence[InstanceView]:
        def unit(sess: Session) -> list[InstanceView]:
            rows = list(sess.scalars(select(Instance).where(Instance.host == host,
                                                            Instance.deleted.is_(False))))
            meta: dict[str, dict[str, str]] = {}
            if rows:
                for m in sess.scalars(select(InstanceMetadata).where(
                        InstanceMetadata.instance_id.in_([r.id for r in rows]))):
                    meta.setdefault(m.instance_id, {})[m.key] = m.value
            return [InstanceView(id=r.id, name=r.name, vm_state=r.vm_state,
                                 task_state=r.task_state, metadata=meta.get(r.id, {}),
                                 vcpus=r.vcpus, memory_mb=r.memory_mb, disk_gb=r.root_gb,
                                 server_group=r.server_group_id) for r in rows]
        return self.db.run_in_transaction(unit)

    def instance_status(self, instance_id: str) -> InstanceStatus | None:
        def unit(sess: Session) -> InstanceStatus | None:
            r = sess.get(Instance, instance_id)
            if r is None or r.deleted:
                return None
            return InstanceStatus(host=r.host, vm_state=r.vm_state, task_state=r.task_state,
                                  power_state=r.power_state, fault=r.fault)
        return self.db.run_in_transaction(unit)

    def host_clean(self, host: str) -> bool:
        """The host's agent has swept: no tombstone of an instance evacuated away from it
        is still waiting for its stale copy to be destroyed (the agent marks them
        ``source-cleaned`` after each reconciliation)."""
        def unit(sess: Session) -> bool:
            waiting = sess.scalar(select(func.count()).select_from(Migration).where(
                Migration.source_host == host, Migration.status.in_(("accepted", "done"))))
            return not waiting
        return self.db.run_in_transaction(unit)

    # ---- compute: actions ------------------------------------------------------------
    def _compute(self, method: str, path: str, body: dict[str, Any],
                 expect: tuple[int, ...] = (200, 202)) -> None:
        try:
            self.clients.request(method, "compute", path, json=body, headers=COMPUTE_HEADERS,
                                 expect=expect, timeout=30)
        except ServiceCallError as exc:
            raise call_error(exc.status, str(exc)) from None

    def disable(self, host: str, reason: str) -> None:
        self._compute("PUT", "/os-services/disable-log-reason",
                      {"host": host, "binary": "nova-compute", "disabled_reason": reason[:255]})

    def enable(self, host: str) -> None:
        self._compute("PUT", "/os-services/enable", {"host": host, "binary": "nova-compute"})

    def set_forced_down(self, host: str, forced: bool) -> None:
        self._compute("PUT", "/os-services/force-down",
                      {"host": host, "binary": "nova-compute", "forced_down": forced})

    def evacuate_many(self, calls: Sequence[tuple[str, str]]
                      ) -> list[str | EvacuateError]:
        """One request per source host for all its servers (the compute API's
        ``POST /os-hosts/<host>/evacuate``, one transaction; at most ``EVACUATE_BATCH``
        servers each), the requests of different sources ``evacuator.parallel_calls``
        at a time. Each server gets the answer a single evacuate would have given."""
        groups: dict[str, list[int]] = {}
        for index, (_, source) in enumerate(calls):
            groups.setdefault(source, []).append(index)
        chunks = [(source, indexes[i:i + EVACUATE_BATCH]) for source, indexes in groups.items()
                  for i in range(0, len(indexes), EVACUATE_BATCH)]
        if not chunks:
            return []
        answers: dict[int, str | EvacuateError] = {}
        workers = min(len(chunks), self.cfg.evacuator.parallel_calls)
        with ThreadPoolExecutor(workers, thread_name_prefix="evacuate") as pool:
            for part in pool.map(lambda c: self._evacuate_chunk(calls, *c), chunks):
                answers.update(part)
        return [answers[i] for i in range(len(calls))]

    def _evacuate_chunk(self, calls: Sequence[tuple[str, str]], source: str,
                        indexes: list[int]) -> dict[int, str | EvacuateError]:
        ids = [calls[i][0] for i in indexes]
        began = time.monotonic()
        try:
            resp = self.clients.request(
                "POST", "compute", f"/os-hosts/{source}/evacuate",
                json={"evacuate": {"servers": ids}}, headers=COMPUTE_HEADERS, expect=(200,),
                timeout=60)
            items = resp.json()["evacuations"]
            if [item["server_id"] for item in items] != ids:
                raise ValueError("the answer does not list the servers asked for")
        except ServiceCallError as exc:
            failed = call_error(exc.status, str(exc))
            return dict.fromkeys(indexes, failed)
        except (ValueError, KeyError, TypeError) as exc:  # the call may have moved some
            failed = TransientError(f"evacuate of {source}'s servers: bad answer: {exc}")
            return dict.fromkeys(indexes, failed)
        LOG.info("evacuate %d server(s) of %s: one call, %.2f s", len(ids), source,
                 time.monotonic() - began)
        answers: dict[int, str | EvacuateError] = {}
        for index, item in zip(indexes, items, strict=True):
            if isinstance(item.get("host"), str):
                answers[index] = item["host"]
                LOG.info("evacuate %s: %s -> %s", item["server_id"], source, item["host"])
            else:
                error = item.get("error") or {}
                answers[index] = call_error(error.get("code"), str(error.get("message")),
                                            error.get("type"))
        return answers

    # ---- records -----------------------------------------------------------------------
    def open_events(self) -> Sequence[EventRecord]:
        return self.db.run_in_transaction(lambda s: [
            event_record(r) for r in s.scalars(select(EvacuationEvent).where(
                EvacuationEvent.open_host.is_not(None)).order_by(EvacuationEvent.id))])

    def all_events(self, limit: int = 100) -> list[EventRecord]:
        return self.db.run_in_transaction(lambda s: [
            event_record(r) for r in s.scalars(select(EvacuationEvent).order_by(
                EvacuationEvent.id.desc()).limit(limit))])

    def event(self, event_id: int) -> EventRecord | None:
        def unit(sess: Session) -> EventRecord | None:
            row = sess.get(EvacuationEvent, event_id)
            return event_record(row) if row is not None else None
        return self.db.run_in_transaction(unit)

    def last_event(self, host: str) -> EventRecord | None:
        def unit(sess: Session) -> EventRecord | None:
            row = sess.scalars(select(EvacuationEvent).where(EvacuationEvent.host == host)
                               .order_by(EvacuationEvent.id.desc()).limit(1)).first()
            return event_record(row) if row is not None else None
        return self.db.run_in_transaction(unit)

    def create_event(self, host: str, detected_at: float, alive_at: float) -> EventRecord | None:
        def unit(sess: Session) -> EventRecord:
            row = EvacuationEvent(host=host, open_host=host, state=EventState.DETECTED.value,
                                  detected_at=detected_at, alive_at=alive_at, alerts="",
                                  storm_override=False)
            sess.add(row)
            sess.flush()
            return event_record(row)
        try:
            return self.db.run_in_transaction(unit)
        except IntegrityError:  # the unique open_host: this host already has an open event
            return None

    def update_event(self, event_id: int, expected: EventState, new: EventState,
                     **fields: Any) -> bool:
        def unit(sess: Session) -> bool:
            row = sess.get(EvacuationEvent, event_id)
            if row is None:
                return False
            return rowcount(sess.execute(
                update(EvacuationEvent).where(EvacuationEvent.id == event_id,
                                              EvacuationEvent.state == expected.value)
                .values(**event_values(new, row.host, **fields)))) == 1
        return self.db.run_in_transaction(unit)

    def instance_records(self, event_id: int) -> Sequence[InstanceRecord]:
        return self.db.run_in_transaction(lambda s: [
            instance_record(r) for r in s.scalars(select(EvacuationInstance).where(
                EvacuationInstance.event_id == event_id).order_by(
                    EvacuationInstance.priority.desc(), EvacuationInstance.instance_id))])

    def add_instance_record(self, record: InstanceRecord) -> bool:
        row = instance_row(record)
        values = {c.name: getattr(row, c.name) for c in EvacuationInstance.__table__.columns}
        try:
            self.db.run_in_transaction(lambda s: s.execute(insert(EvacuationInstance)
                                                           .values(**values)))
        except IntegrityError:
            return False
        return True

    def update_instance(self, event_id: int, instance_id: str, expected: InstanceState,
                        new: InstanceState, **fields: Any) -> bool:
        return self.db.run_in_transaction(lambda s: rowcount(s.execute(
            update(EvacuationInstance).where(EvacuationInstance.event_id == event_id,
                                             EvacuationInstance.instance_id == instance_id,
                                             EvacuationInstance.state == expected.value)
            .values(**instance_values(new, **fields)))) == 1)

"""What the evacuation controller sees and does outside itself: :class:`EvacuationEnv`.

The controller is pure logic over this interface, so its decisions are tested
in milliseconds against a simulated cloud with virtual time (``sim.py``), and
the real implementation is a thin mapping onto existing tools:

============================  =================================================
method                        real implementation
============================  =================================================
``now``                       ``time.time()`` on the controller's node
``log`` / ``alert``           logging; alert also to the operator's channel
``nodes``                     ``crm_mon --output-as=xml`` (``ha.crm``):
                              unclean -> UNCLEAN, online -> ONLINE, else OFFLINE
``fence_events``              ``stonith_admin --history NODE --verbose
                              --output-as=xml`` (``ha.evacuator.fence_history``),
                              ``completed`` as epoch seconds (None if it cannot
                              be read); pending operations as PENDING
``services``                  ``compute_services`` rows; ``alive`` is the
                              heartbeat (``last_seen``) fresher than
                              ``compute.service_down_time``
``instances_on``              ``instances`` + ``instance_metadata`` +
                              ``server_groups`` where ``host`` = the host
``instance_status``           one ``instances`` row
``disable`` / ``enable`` /    the os-services API: ``disable-log-reason``,
``set_forced_down``           ``enable``, ``force-down``
``evacuate``                  the compute API's ``evacuate`` server action
                              (``core/compute/evacuate.py``) after checking the
                              instance is still on ``source``; each refusal's
                              code (``core.compute.errors.ErrorCode``) is mapped
                              by ``real.CODE_ERRORS``: ``no_valid_host`` is
                              :class:`NoValidHost`, the instance's own refusals
                              :class:`Conflict`, ``claims_lost``, 5xx and
                              timeouts :class:`TransientError`
``host_clean``                the host's agent finished its sweep since it came
                              back and no ``migrations`` tombstone with that
                              ``source_host`` is still ``accepted``/``done``
records                       ``evacuation_events`` / ``evacuation_instances``
                              (``ha.evacuator.models``); each update is one
                              ``UPDATE ... WHERE state = :expected``
============================  =================================================

Every record change is a compare-and-swap on the record's state, so a second
controller (Pacemaker runs it as one primitive; after a failover a new one
starts on another node) resumes from the records without doing a step twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

# Instance states: the compute API's own (the controller reads them from it).
from core.compute.states import ACTIVE as ACTIVE
from core.compute.states import BUILDING as BUILDING
from core.compute.states import DELETED as DELETED
from core.compute.states import DELETING as DELETING
from core.compute.states import ERROR as ERROR
from core.compute.states import REBUILDING as REBUILDING
from core.compute.states import STOPPED as STOPPED


class NodeState(StrEnum):
    """A cluster node as Pacemaker reports it."""

    ONLINE = "online"  # a member of the cluster
    OFFLINE = "offline"  # not a member, and clean: fenced, or left on purpose
    UNCLEAN = "unclean"  # lost: not a member, and not (yet) fenced


class FenceResult(StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    PENDING = "pending"


@dataclass(frozen=True)
class FenceEvent:
    """One fence operation on a node, from the fence history."""

    # Completion time, epoch seconds; None while pending and where the history's
    # time cannot be read: such an operation never confirms a fence.
    at: float | None
    action: str  # "off", "reboot" or "on"
    result: FenceResult

    @property
    def killed(self) -> bool:
        """The node was powered off by this operation (an "on" kills nothing)."""
        return self.result is FenceResult.SUCCESS and self.action in ("off", "reboot")


@dataclass(frozen=True)
class ServiceView:
    """A hypervisor's compute service (one ``compute_services`` row)."""

    host: str
    enabled: bool
    disabled_reason: str | None
    forced_down: bool
    reserved: bool
    last_heartbeat: float
    alive: bool  # heartbeat fresher than the service down time, forced down or not

    @property
    def up(self) -> bool:
        """The compute API's notion: not forced down, and heartbeating."""
        return self.alive and not self.forced_down


@dataclass(frozen=True)
class InstanceView:
    """An instance on a failed host, as the controller decides about it."""

    id: str
    name: str
    vm_state: str
    task_state: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    vcpus: int = 1
    memory_mb: int = 512
    disk_gb: int = 1
    server_group: str | None = None


@dataclass(frozen=True)
class InstanceStatus:
    """Where an instance is now and what is being done to it (rebuild progress)."""

    host: str | None
    vm_state: str
    task_state: str | None
    power_state: int = 0
    fault: str | None = None


class EventState(StrEnum):
    DETECTED = "detected"  # the host's node is lost; waiting for its fence
    FENCING_CONFIRMED = "fencing_confirmed"  # fenced after it was last alive
    EVACUATING = "evacuating"  # forced down, instance records written
    HELD = "held"  # storm: too many hypervisors failed at once; operator or recovery
    DONE = "done"  # every instance record terminal, none failed
    FAILED = "failed"  # every instance record terminal, some failed
    ABORTED = "aborted"  # the host came back before it was evacuated, or operator


EVENT_TERMINAL = frozenset({EventState.DONE, EventState.FAILED, EventState.ABORTED})


class InstanceState(StrEnum):
    PENDING = "pending"  # to be evacuated from ``source`` (at ``next_try_at``)
    REBUILDING = "rebuilding"  # evacuate called; rebuilding on ``target``
    DONE = "done"  # ACTIVE (or STOPPED) on ``target`` with no task
    FAILED = "failed"  # given up, with ``error``; alerted
    SKIPPED = "skipped"  # not evacuated on purpose (opt-out, deleted, ...), ``error`` says why


INSTANCE_TERMINAL = frozenset({InstanceState.DONE, InstanceState.FAILED, InstanceState.SKIPPED})


@dataclass(frozen=True)
class EventRecord:
    """One failure of one host, and the phase timings of its evacuation."""

    id: int
    host: str
    state: EventState
    detected_at: float  # failure detected
    alive_at: float  # last sign of life before it (a fence must be newer to count)
    fenced_at: float | None = None  # the fence that killed it (fence history time)
    fence_confirmed_at: float | None = None  # when the controller saw that fence
    disabled_at: float | None = None
    forced_down_at: float | None = None
    first_rebuild_at: float | None = None
    last_rebuild_at: float | None = None
    all_active_at: float | None = None  # every protected instance ACTIVE/STOPPED again
    finished_at: float | None = None
    reenabled_at: float | None = None
    alerts: tuple[str, ...] = ()  # alert keys already sent (each alert once per event)
    storm_override: bool = False  # an operator released the storm hold for this event
    reason: str | None = None  # why held, aborted or failed

    @property
    def terminal(self) -> bool:
        return self.state in EVENT_TERMINAL


@dataclass(frozen=True)
class InstanceRecord:
    """One instance of an event: what was decided and how far it got."""

    event_id: int
    instance_id: str
    name: str
    state: InstanceState
    source: str  # the host to evacuate it from: the event's host, or a target that died
    priority: int = 0
    expected_vm_state: str = ACTIVE  # STOPPED stays stopped on its new host
    target: str | None = None
    attempts: int = 0  # evacuate calls made
    next_try_at: float = 0.0
    started_at: float | None = None  # of the current rebuild
    finished_at: float | None = None
    error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in INSTANCE_TERMINAL


class EvacuateError(Exception):
    """The evacuate call did not move the instance."""


class NoValidHost(EvacuateError):
    """No surviving host can take the instance (capacity, anti-affinity). Not retried."""


class Conflict(EvacuateError):
    """The instance or its host is not in a state that allows evacuation."""


class TransientError(EvacuateError):
    """The call failed for a reason that may pass (API unreachable, 5xx): retried."""


class EvacuationEnv(Protocol):
    """Everything the controller uses outside itself. It never sleeps: the loop that
    calls ``do_one_iteration()`` does."""

    # ---- clock and output --------------------------------------------------------------
    def now(self) -> float: ...

    def log(self, message: str) -> None:
        """One decision or observation, for the operator's log."""

    def alert(self, message: str) -> None:
        """Something an operator must act on (sent once per cause, not per iteration)."""

    # ---- cluster ------------------------------------------------------------------------
    def nodes(self) -> Mapping[str, NodeState]:
        """Every cluster node's state, as Pacemaker reports it now."""

    def fence_events(self, node: str) -> Sequence[FenceEvent]:
        """The fence history of ``node``, every operation, oldest first."""

    # ---- compute ------------------------------------------------------------------------
    def services(self) -> Sequence[ServiceView]:
        """Every hypervisor's compute service."""

    def instances_on(self, host: str) -> Sequence[InstanceView]:
        """The (not deleted) instances whose host is ``host``."""

    def instance_status(self, instance_id: str) -> InstanceStatus | None:
        """None when the instance no longer exists (deleted)."""

    def disable(self, host: str, reason: str) -> None:
        """Disable the host's compute service (the scheduler skips it). Idempotent."""

    def enable(self, host: str) -> None:
        """Enable the host's compute service. Idempotent."""

    def set_forced_down(self, host: str, forced: bool) -> None:
        """Force the host's compute service down (the compute API then allows
        evacuating its instances, whatever its heartbeat says), or clear it."""

    def evacuate_many(self, calls: Sequence[tuple[str, str]]
                      ) -> list[str | EvacuateError]:
        """Rebuild each ``(instance_id, source)`` on another host. Per call, in order:
        the host the compute API chose (reserved hosts first, anti-affinity kept), or
        the :class:`NoValidHost`, :class:`Conflict` (also when the instance is no
        longer on its source) or :class:`TransientError` it failed with. The calls may
        run concurrently (the real environment's do): the controller only passes
        instances of one priority level together, so capacity still goes to the
        higher levels first."""

    def host_clean(self, host: str) -> bool:
        """The returned host has destroyed its stale domains of evacuated instances."""

    # ---- records ------------------------------------------------------------------------
    def open_events(self) -> Sequence[EventRecord]:
        """Every event that is not terminal."""

    def last_event(self, host: str) -> EventRecord | None:
        """The newest event of ``host``, terminal or not."""

    def create_event(self, host: str, detected_at: float, alive_at: float) -> EventRecord | None:
        """A new event in DETECTED; None if ``host`` already has an open one."""

    def update_event(self, event_id: int, expected: EventState, new: EventState,
                     **fields: Any) -> bool:
        """Set ``state`` = ``new`` and ``fields`` if the state is still ``expected``."""

    def instance_records(self, event_id: int) -> Sequence[InstanceRecord]: ...

    def add_instance_record(self, record: InstanceRecord) -> bool:
        """Insert; False if the event already has a record of that instance."""

    def update_instance(self, event_id: int, instance_id: str, expected: InstanceState,
                        new: InstanceState, **fields: Any) -> bool:
        """Compare-and-swap on one instance record's state, like ``update_event``."""

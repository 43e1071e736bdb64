"""When the compute API lets instances be evacuated from a host: only when that host's
compute service is *forced down*.

Nova accepts any host whose service is down, and a stale heartbeat makes a service
down. Haven does not: a crashed agent, a lost database path or a skewed clock
stops the heartbeat while the guests run on, and an evacuation then starts a
second QEMU on the same disk. ``forced_down`` is set only by the evacuation
controller after Pacemaker confirmed the host's fence (``ha/evacuator``), or by an
operator stating the host is off (``openstack compute service set --down HOST
nova-compute``). A host without a service row is refused too: nothing says it is off.

Also here, for the same reason: which instance states may be evacuated, the state an
evacuated instance comes back in, and the placement request of an evacuation.

Pure, so the evacuation simulator (``ha/evacuator/sim.py``) decides with these very
rules instead of copies of them (``tests/integration/test_sim_contract.py`` holds the
two to the same answers).
"""

from __future__ import annotations

from typing import Protocol

from core.compute import states
from core.compute.scheduler import Request

# Nova's evacuate accepts active, stopped and error instances; anything building,
# deleted or in another task is left alone.
EVACUABLE = (states.ACTIVE, states.STOPPED, states.ERROR)


class SourceService(Protocol):
    """What the rule reads of a compute service (a ``compute_services`` row, or the
    simulator's host)."""

    @property
    def forced_down(self) -> bool: ...


def may_evacuate_from(service: SourceService | None) -> bool:
    """True only if ``service`` exists and is forced down (its heartbeat, fresh or not,
    does not matter: forced down is the statement that the host is off)."""
    return service is not None and service.forced_down is True


def refusal(host: str | None) -> str:
    """The 409 message for a host :func:`may_evacuate_from` refuses."""
    return (f"Compute service of {host} is not forced down. Evacuation requires the "
            "source host's service to be forced down after the host is confirmed off "
            "(fenced): the evacuation controller does this after a confirmed fence; an "
            "operator: openstack compute service set --down HOST nova-compute.")


def evacuable(vm_state: str, task_state: str | None) -> bool:
    """An instance in ``vm_state`` doing ``task_state`` may be evacuated: idle in an
    evacuable state, or in a rebuild (an evacuation whose target died)."""
    return vm_state in EVACUABLE and task_state in (None, states.REBUILDING)


def not_evacuable(instance: str, vm_state: str, task_state: str | None) -> str:
    """The 409 message for an instance :func:`evacuable` refuses."""
    return (f"Cannot evacuate instance {instance} in vm_state {vm_state} "
            f"and task_state {task_state}.")


def state_after(vm_state: str) -> str:
    """The vm_state an evacuated instance is rebuilt into: a stopped instance stays
    stopped on its new host; anything else (active, error) comes back active."""
    return states.STOPPED if vm_state == states.STOPPED else states.ACTIVE


def placement_request(vcpus: int, memory_mb: int, disk_gb: int, source: str,
                      avoid: frozenset[str], only: frozenset[str] | None,
                      target: str | None = None) -> Request:
    """Where an evacuated instance may go: never its source, reserved hosts first, its
    group's constraints (``avoid``: anti-affinity; ``only``: affinity) kept unless an
    operator named the ``target``."""
    return Request(vcpus, memory_mb, disk_gb, avoid_hosts=avoid | {source},
                   only_hosts=frozenset({target}) if target else only, use_reserved=True)

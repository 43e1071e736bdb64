"""When the compute API lets instances be evacuated from a host: only when that host's
compute service is *forced down*.

Nova accepts any host whose service is down, and a stale heartbeat makes a service
down. Haven does not: a crashed agent, a lost database path or a skewed clock
stops the heartbeat while the guests run on, and an evacuation then starts a
second QEMU on the same disk. ``forced_down`` is set only by the evacuation
controller after Pacemaker confirmed the host's fence (``ha/evacuator``), or by an
operator stating the host is off (``openstack compute service set --down HOST
nova-compute``). A host without a service row is refused too: nothing says it is off.

Pure, so the evacuation simulator (``ha/evacuator/sim.py``) decides with this very
rule instead of a copy of it.
"""

from __future__ import annotations

from typing import Protocol


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

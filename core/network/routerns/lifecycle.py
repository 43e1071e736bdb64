"""One router on one node: start, stop, monitor -- the contract its OCF agent keeps.

* :func:`start` applies the plan (idempotent: on a running router it converges any
  drift, on a half-made one it completes it);
* :func:`stop` removes the namespace (success when there is none: a stop is a
  force operation);
* :func:`monitor` says RUNNING when what the kernel holds equals the plan,
  NOT_RUNNING when there is no namespace, FAILED (with what differs) otherwise.

A spec that contradicts itself raises :class:`~core.network.routerns.plan.PlanError`
from start and monitor alike: the agent maps it to a configuration error, never to a
retry on another node.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from core.network.routerns import netns
from core.network.routerns.plan import RouterSpec, differences, plan


class Health(enum.Enum):
    RUNNING = "running"
    NOT_RUNNING = "not running"
    FAILED = "failed"


@dataclass(frozen=True)
class Status:
    health: Health
    problems: list[str] = field(default_factory=list)


def start(spec: RouterSpec, node: str | None = None) -> Status:
    """Make the router's namespace what the spec says, then check it took."""
    netns.apply(plan(spec), node)
    return monitor(spec, node)


def stop(namespace: str) -> None:
    netns.remove(namespace)


def monitor(spec: RouterSpec, node: str | None = None) -> Status:
    desired = plan(spec)
    observed = netns.observe(spec.namespace, node)
    if observed is None:
        return Status(Health.NOT_RUNNING)
    problems = differences(desired, observed)
    return Status(Health.FAILED, problems) if problems else Status(Health.RUNNING)

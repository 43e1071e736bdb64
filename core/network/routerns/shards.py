"""Routers in shards: which routers one Pacemaker resource ``haven-l3-N`` carries.

Haven does not make one cluster resource per router (the CIB would change with every
``router create``, and Pacemaker's transitions grow with it). It runs a fixed number
``K`` of shards, each an ordinary primitive Pacemaker places on one network node at a
time (fencing guarantees a lost node's copy is off before another starts), and a
router belongs to shard ``shard_of(router_id, K)``.

The hash is stable across processes, hosts and Python versions (Python's own
``hash`` of a str is salted per process): the first 8 bytes of the SHA-256 of the
router id (its UTF-8 bytes), read big-endian, modulo ``K``. Changing ``K`` moves
routers between shards: it is a maintenance operation (stop every shard, change the
resources' ``shards`` parameter, start them).

:func:`converge` is the whole data plane of one shard on one node: every router of
the shard made as the database says, and every namespace of the shard whose router
is gone (deleted since) removed. Start and the recurring monitor both run it, so a
router created, changed or deleted through the API is carried out within one
monitor interval. :func:`remove_all` is stop.

When :func:`converge` binds a router's ports to its node (the shard started here,
after a failover or a move), the outcome names the hosts whose network agents carry
something of those ports, before and after the move, exactly as the network API
nudges them after a port's binding changes
(:func:`core.network.agent_nudges.port_hosts`): the new node (its agent makes the
router's networks' bridges), the old one (it lets them go) and the VXLAN peers
(their forwarding entries for the router's MACs now point here). The caller sends
the nudges once the binding is committed, so the new node's agent does not wait
for its next periodic round.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.common.db import Database
from core.network.agent_nudges import port_hosts
from core.network.l3_models import Router
from core.network.routerns import lifecycle, netns
from core.network.routerns.lifecycle import Health
from core.network.routerns.plan import PlanError, RouterSpec
from core.network.routerns.source import bind_to, router_port_list, router_spec

DEFAULT_PREFIX = "qrouter-"


def shard_of(router_id: str, shards: int) -> int:
    """The shard a router belongs to (see the module's docstring for the hash)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    digest = hashlib.sha256(router_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def routers_of(s: Session, shard: int, shards: int) -> list[str]:
    """The ids of the shard's routers in the database, sorted."""
    return sorted(rid for rid in s.scalars(select(Router.id))
                  if shard_of(rid, shards) == shard)


def namespaces_of(shard: int, shards: int, prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """The shard's router namespaces on this node: namespace -> router id."""
    out = {}
    for ns in netns.namespaces():
        if ns.startswith(prefix):
            router_id = ns.removeprefix(prefix)
            if router_id and shard_of(router_id, shards) == shard:
                out[ns] = router_id
    return out


@dataclass
class Outcome:
    """What one :func:`converge` did: routers made, namespaces removed, routers this node
    could not make as planned (``failed``: another node might), routers whose own
    description cannot be carried out (``unplannable``: no node can), routers waiting
    for a network's bridge that this node's network agent has not made yet
    (``waiting``: it makes it at its next round, for the ports just ``bound`` here),
    and the hosts whose network agents those bindings concern (``nudge``)."""

    converged: list[str] = field(default_factory=list)
    bound: list[str] = field(default_factory=list)
    nudge: set[str] = field(default_factory=set)
    waiting: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unplannable: dict[str, str] = field(default_factory=dict)


def converge(db: Database, shard: int, shards: int, bridge_for: Callable[[str], str],
             node: str | None = None, prefix: str = DEFAULT_PREFIX,
             host: str | None = None) -> Outcome:
    """Make the shard's routers on this node what the database says.

    The routers are read in one transaction; a database error propagates (the caller
    decides what an unreadable database means). With ``host`` (this node's name as
    its network agent knows it), the routers' ports are bound to it in that same
    transaction (:func:`~core.network.routerns.source.bind_to`).
    One router that cannot be made does not stop the others: its error is in the outcome.
    """
    def read(s: Session) -> tuple[dict[str, RouterSpec | LookupError], list[str], set[str]]:
        specs: dict[str, RouterSpec | LookupError] = {}
        bound: list[str] = []
        hosts: set[str] = set()
        for rid in routers_of(s, shard, shards):
            try:
                specs[rid] = router_spec(s, rid, bridge_for, namespace=prefix + rid)
            except LookupError as exc:  # deleted meanwhile, or a port without an address
                specs[rid] = exc
                continue
            if host is not None:
                bound.extend(_bind(s, rid, host, hosts))
        return specs, bound, hosts

    specs, bound, hosts = db.run_in_transaction(read)
    outcome = Outcome(bound=bound, nudge=hosts)
    for ns, rid in sorted(namespaces_of(shard, shards, prefix).items()):
        if rid not in specs:
            lifecycle.stop(ns)  # the router was deleted: its addresses must go too
            outcome.removed.append(rid)
    for rid, spec in specs.items():
        if isinstance(spec, LookupError):
            outcome.unplannable[rid] = str(spec)
            continue
        try:
            # read first: a converged router is left alone (no nft table rewritten every
            # few seconds, no address re-announced), only a differing one is applied
            status = lifecycle.monitor(spec, node)
            if status.health is not Health.RUNNING:
                status = lifecycle.start(spec, node)
        except PlanError as exc:
            outcome.unplannable[rid] = str(exc)
            continue
        except netns.BridgeMissing as exc:
            outcome.waiting[rid] = str(exc)
            continue
        except netns.DataplaneError as exc:
            outcome.failed[rid] = str(exc)
            continue
        if status.health is Health.RUNNING:
            outcome.converged.append(rid)
        else:
            outcome.failed[rid] = "; ".join(status.problems) or status.health.value
    return outcome


def _bind(s: Session, router_id: str, host: str, hosts: set[str]) -> list[str]:
    """Bind the router's ports to ``host`` (:func:`bind_to`); adds to ``hosts`` those
    whose agents carry something of a port that moved, before and after its move."""
    moving = [p for p in router_port_list(s, router_id) if p.host_id != host]
    if not moving:
        return []  # the usual round: nothing read beyond the ports
    for port in moving:
        hosts |= port_hosts(s, port)  # the old host, its VXLAN peers, the watchers
    moved = bind_to(s, router_id, host)
    for port in moving:
        hosts |= port_hosts(s, port)  # the new host and the same peers
    return moved


def remove_all(shard: int, shards: int, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Stop: take every namespace of the shard away (whatever the database says)."""
    gone = []
    for ns, rid in sorted(namespaces_of(shard, shards, prefix).items()):
        lifecycle.stop(ns)
        gone.append(rid)
    return gone

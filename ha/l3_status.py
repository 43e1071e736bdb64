"""``haven cluster l3-shards``: which node holds which router shard (and, given a
router id, which shard carries it).

Pacemaker is the truth about where a shard runs (the agent's marker is only each
node's own record): this reads ``crm_mon``'s XML like the bootstrap's waits do.
"""

from __future__ import annotations

from ha.crm import ClusterView

L3_AGENT = "ocf:haven:haven-l3"


def shard_holders(view: ClusterView) -> dict[str, tuple[str, ...]]:
    """Every haven-l3 resource in the cluster -> the nodes it runs on (one, or none
    while it is stopped or failed), sorted by shard number."""
    ids = [rid for rid, r in view.resources.items() if r.agent == L3_AGENT]

    def number(rid: str) -> tuple[int, str]:
        tail = rid.rsplit("-", 1)[-1]
        return (int(tail), rid) if tail.isdigit() else (1 << 30, rid)

    return {rid: view.running_on(rid) for rid in sorted(ids, key=number)}


def render(view: ClusterView) -> str:
    holders = shard_holders(view)
    if not holders:
        return "no router shards (haven-l3 resources) in the cluster\n"
    failed = {f.resource for f in view.failures}
    lines = []
    for rid, nodes in holders.items():
        where = ", ".join(nodes) if nodes else "stopped"
        note = "  (failed actions: see crm_mon)" if rid in failed else ""
        lines.append(f"{rid}\t{where}{note}")
    return "\n".join(lines) + "\n"

"""Reading Pacemaker's XML output: crm_mon (nodes, resources, DC, quorum) and
stonith_admin's fence history.

Pure parsers, so the lab's waits ("3 nodes online", "Dummy started elsewhere",
"node2 fenced off") are tested on captured XML without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree import ElementTree as ET


@dataclass(frozen=True)
class NodeView:
    name: str
    online: bool
    unclean: bool
    standby: bool


@dataclass(frozen=True)
class ResourceView:
    id: str
    agent: str
    role: str
    active: bool
    failed: bool
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Failure:
    """A failed resource action crm_mon lists (until ``pcs resource cleanup``)."""

    resource: str  # the primitive's id (a clone instance's ":N" suffix removed)
    node: str
    task: str
    exit_reason: str


@dataclass
class ClusterView:
    """One node's view of the cluster, as ``crm_mon --output-as=xml`` reports it."""

    dc: str | None
    quorum: bool
    nodes: dict[str, NodeView] = field(default_factory=dict)
    resources: dict[str, ResourceView] = field(default_factory=dict)
    # A clone's instances share one id in crm_mon's output: every instance, by id.
    instances: dict[str, list[ResourceView]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    @property
    def online(self) -> list[str]:
        return sorted(name for name, node in self.nodes.items() if node.online)

    def running_on(self, resource: str) -> tuple[str, ...]:
        """Nodes where ``resource`` (a primitive, or a clone's primitive) is active
        and not failed; empty if it is stopped or unknown."""
        return tuple(sorted({n for v in self.instances.get(resource, [])
                             if v.active and not v.failed for n in v.nodes}))

    def promoted_on(self, resource: str) -> tuple[str, ...]:
        """Nodes where a promotable clone's ``resource`` runs promoted."""
        return tuple(sorted({n for v in self.instances.get(resource, [])
                             if v.active and not v.failed and v.role in ("Promoted", "Master")
                             for n in v.nodes}))


def _true(value: str | None) -> bool:
    return value == "true"


def parse_crm_mon(xml: str) -> ClusterView:
    root = ET.fromstring(xml)
    dc = root.find("summary/current_dc")
    present = dc is not None and _true(dc.get("present"))
    view = ClusterView(dc=dc.get("name") if present and dc is not None else None,
                       quorum=present and dc is not None and _true(dc.get("with_quorum")))
    for node in root.iterfind("nodes/node"):
        name = node.get("name", "")
        view.nodes[name] = NodeView(name=name, online=_true(node.get("online")),
                                    unclean=_true(node.get("unclean")),
                                    standby=_true(node.get("standby")))
    # Primitives may sit inside groups, clones and bundles: take them all.
    for res in root.iter("resource"):
        rid = res.get("id", "")
        item = ResourceView(
            id=rid, agent=res.get("resource_agent", ""), role=res.get("role", ""),
            active=_true(res.get("active")), failed=_true(res.get("failed")),
            nodes=tuple(n.get("name", "") for n in res.iterfind("node")))
        view.resources[rid] = item
        view.instances.setdefault(rid, []).append(item)
    for failure in root.iterfind("failures/failure"):
        # op_key is RESOURCE_TASK_INTERVAL, e.g. haven-identity_monitor_10000
        resource = failure.get("op_key", "").rsplit("_", 2)[0]
        view.failures.append(Failure(resource=resource.split(":", 1)[0],
                                     node=failure.get("node", ""),
                                     task=failure.get("task", ""),
                                     exit_reason=failure.get("exitreason", "")))
    return view


@dataclass(frozen=True)
class FenceEvent:
    action: str
    target: str
    status: str
    delegate: str
    origin: str
    completed: str

    @property
    def succeeded(self) -> bool:
        return self.status == "success"


def parse_fence_history(xml: str) -> list[FenceEvent]:
    """Events of ``stonith_admin --history '*' --verbose --output-as=xml``.

    Without --verbose stonith_admin reports only one fence per node, so callers
    must pass it to see a node fenced twice.
    """
    root = ET.fromstring(xml)
    return [FenceEvent(action=ev.get("action", ""), target=ev.get("target", ""),
                       status=ev.get("status", ""), delegate=ev.get("delegate", ""),
                       origin=ev.get("origin", ""), completed=ev.get("completed", ""))
            for ev in root.iter("fence_event")]

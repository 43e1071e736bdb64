"""Router shards: the stable hash, the CIB that places the shards, and the status view."""

from __future__ import annotations

import shlex
import uuid

import pytest

from core.network.routerns.shards import shard_of
from ha.bootstrap.cib import ClusterPlan, all_commands, created_object
from ha.crm import parse_crm_mon
from ha.l3_status import render, shard_holders


def test_the_hash_is_stable_across_processes_and_versions() -> None:
    # Pinned values: a change of the hash would move every router to another shard
    # on an upgrade (two nodes would each think they carry it for a moment).
    assert [shard_of("00000000-0000-0000-0000-000000000000", k) for k in (1, 2, 3, 7)] == [
        0, 0, 2, 1]
    assert shard_of("5f0c3b2e-9a1d-4c57-8e0f-1b2c3d4e5f60", 3) == 0


def test_routers_spread_over_every_shard() -> None:
    counts = [0, 0, 0]
    for _ in range(3000):
        counts[shard_of(str(uuid.uuid4()), 3)] += 1
    assert all(c > 800 for c in counts), counts


def test_no_shards_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("r", 0)


def plan(**kw: object) -> ClusterPlan:
    base: dict[str, object] = dict(nodes=("n1", "n2", "n3"), vip="10.213.0.100/24",
                                   vip_nic="eth0", hypervisors=("n2", "n3"))
    base.update(kw)
    return ClusterPlan(**base)  # type: ignore[arg-type]


def lines(p: ClusterPlan) -> list[str]:
    return [shlex.join(c) for c in all_commands(p)]


def test_shards_are_primitives_on_network_nodes_spread_and_after_the_database() -> None:
    text = lines(plan(network_nodes=("n1", "n2")))
    shards = [t for t in text if "ocf:haven:haven-l3" in t]
    assert len(shards) == 3
    for n, line in enumerate(shards):
        assert line.startswith(f"pcs resource create haven-l3-{n} ocf:haven:haven-l3 ")
        assert f"shard={n} shards=3" in line and "config=/etc/haven/haven.yaml" in line
        assert "clone" not in line  # one node at a time: never a clone
        assert "op monitor interval=5s" in line
        assert (f"pcs constraint location add location-haven-l3-{n}-n3--INFINITY "
                f"haven-l3-{n} n3 -- -INFINITY") in text
        assert not any(f"haven-l3-{n} n1 --" in t or f"haven-l3-{n} n2 --" in t for t in text)
        assert (f"pcs constraint order promote galera-clone then start haven-l3-{n} "
                f"id=order-galera-clone-haven-l3-{n}-mandatory") in text
        assert (f"pcs constraint colocation add haven-l3-{n} with Promoted galera-clone "
                f"INFINITY id=colocation-haven-l3-{n}-galera-clone-INFINITY") in text
        assert not any("rabbitmq" in t and f"haven-l3-{n}" in t for t in text)
    # spread, not mandatory: finite negative scores, outweighed by stickiness (100)
    assert ("pcs constraint colocation add haven-l3-2 with haven-l3-0 -- -50 "
            "id=colocation-haven-l3-2-haven-l3-0--50") in text
    assert ("pcs constraint colocation add haven-l3-2 with haven-l3-1 -- -50 "
            "id=colocation-haven-l3-2-haven-l3-1--50") in text
    assert "pcs resource defaults update resource-stickiness=100" in text


def test_default_is_every_node_and_shards_are_configurable() -> None:
    text = lines(plan(l3_shards=5))
    assert len([t for t in text if "ocf:haven:haven-l3" in t]) == 5
    assert not any(t.startswith("pcs constraint location add location-haven-l3") for t in text)
    assert not any("haven-l3" in t for t in lines(plan(l3_shards=0)))


@pytest.mark.parametrize(("kw", "message"), [
    ({"network_nodes": ("zz",)}, "network_nodes not in nodes"),
    ({"l3_shards": -1}, "l3_shards"),
])
def test_bad_router_plans_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan(**kw)


def test_every_shard_object_has_a_unique_id() -> None:
    ids = [o.id for o in (created_object(c) for c in all_commands(plan())) if o]
    assert len(ids) == len(set(ids))
    assert {"haven-l3-0", "haven-l3-1", "haven-l3-2"} <= set(ids)


CRM_MON = """<pacemaker-result api-version="2.25" request="crm_mon -1 --output-as=xml">
  <summary>
    <current_dc present="true" version="2.1.5" name="node1" id="1" with_quorum="true"/>
  </summary>
  <nodes>
    <node name="node1" id="1" online="true" standby="false" unclean="false"/>
    <node name="node2" id="2" online="true" standby="false" unclean="false"/>
  </nodes>
  <resources>
    <resource id="haven-l3-10" resource_agent="ocf:haven:haven-l3" role="Stopped"
              active="false" failed="false"/>
    <resource id="haven-l3-2" resource_agent="ocf:haven:haven-l3" role="Started"
              active="true" failed="false"><node name="node2" id="2" cached="true"/></resource>
    <resource id="haven-l3-0" resource_agent="ocf:haven:haven-l3" role="Started"
              active="true" failed="false"><node name="node1" id="1" cached="true"/></resource>
    <resource id="vip" resource_agent="ocf:heartbeat:IPaddr2" role="Started"
              active="true" failed="false"><node name="node1" id="1" cached="true"/></resource>
  </resources>
  <failures>
    <failure op_key="haven-l3-10_monitor_5000" node="node2" exitstatus="error" exitreason="x"
             exitcode="1" call="9" status="complete" task="monitor"/>
  </failures>
  <status code="0" message="OK"/>
</pacemaker-result>"""


def test_status_says_which_node_holds_which_shard() -> None:
    view = parse_crm_mon(CRM_MON)
    assert shard_holders(view) == {"haven-l3-0": ("node1",), "haven-l3-2": ("node2",),
                                   "haven-l3-10": ()}
    assert render(view).splitlines() == [
        "haven-l3-0\tnode1", "haven-l3-2\tnode2",
        "haven-l3-10\tstopped  (failed actions: see crm_mon)"]

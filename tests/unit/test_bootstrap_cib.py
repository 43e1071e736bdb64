"""The CIB commands `haven cluster bootstrap` will load: the HA rules they encode."""

from __future__ import annotations

import shlex

import pytest

from ha.bootstrap.cib import ClusterPlan, all_commands, render_script


def plan(**kw: object) -> ClusterPlan:
    base: dict[str, object] = dict(nodes=("n1", "n2", "n3"), vip="10.213.0.100/24",
                                   vip_nic="eth0", hypervisors=("n2", "n3"))
    base.update(kw)
    return ClusterPlan(**base)  # type: ignore[arg-type]


def lines(p: ClusterPlan) -> list[str]:
    return [shlex.join(c) for c in all_commands(p)]


def test_fencing_is_on_and_no_node_fences_itself() -> None:
    text = lines(plan())
    assert "pcs property set stonith-enabled=true" in text
    assert "pcs property set no-quorum-policy=stop" in text
    for node in ("n1", "n2", "n3"):
        assert (f"pcs constraint location add location-fence-{node}-{node}--INFINITY "
                f"fence-{node} {node} -- -INFINITY") in text
    assert any("pcmk_host_list=n1" in t for t in text)


def test_galera_is_promotable_with_notify_over_all_nodes() -> None:
    galera = next(t for t in lines(plan()) if "ocf:heartbeat:galera" in t)
    assert "wsrep_cluster_address=gcomm://n1,n2,n3" in galera
    assert "promotable" in galera and "notify=true" in galera and "promoted-max=3" in galera


def test_services_are_clones_with_two_monitor_depths_after_db_and_bus() -> None:
    text = lines(plan())
    identity = next(t for t in text if "ocf:haven:haven-identity" in t)
    assert "OCF_CHECK_LEVEL=0" in identity and "OCF_CHECK_LEVEL=10" in identity
    assert identity.endswith("clone interleave=true")
    assert ("pcs constraint order promote galera-clone then start haven-identity-clone "
            "id=order-galera-clone-haven-identity-clone-mandatory"
            in text)


def test_vip_follows_a_running_identity_api() -> None:
    text = lines(plan())
    assert ("pcs constraint colocation add vip with haven-identity-clone INFINITY "
            "id=colocation-vip-haven-identity-clone-INFINITY") in text
    assert ("pcs constraint order start haven-identity-clone then start vip "
            "id=order-haven-identity-clone-vip-mandatory") in text
    vip = next(t for t in text if "IPaddr2" in t)
    assert "ip=10.213.0.100" in vip and "cidr_netmask=24" in vip


def test_compute_agents_run_only_on_hypervisors() -> None:
    text = lines(plan())
    assert ("pcs constraint location add location-haven-compute-clone-n1--INFINITY "
            "haven-compute-clone n1 -- -INFINITY") in text
    assert not any("haven-compute-clone n2" in t for t in text)
    assert not any("ocf:haven:haven-compute " in t + " " for t in lines(plan(hypervisors=())))


def test_network_agents_run_as_a_clone_only_on_hypervisors_after_their_database() -> None:
    text = lines(plan(l3_shards=0))
    agent = next(t for t in text if "ocf:haven:haven-network-agent" in t)
    assert agent.startswith("pcs resource create haven-network-agent ")
    assert "OCF_CHECK_LEVEL=0" in agent and "OCF_CHECK_LEVEL=10" in agent
    assert agent.endswith("clone interleave=true")
    assert ("pcs constraint location add location-haven-network-agent-clone-n1--INFINITY "
            "haven-network-agent-clone n1 -- -INFINITY") in text
    assert not any("haven-network-agent-clone n2" in t or "haven-network-agent-clone n3" in t
                   for t in text)
    assert ("pcs constraint order promote galera-clone then start haven-network-agent-clone "
            "id=order-galera-clone-haven-network-agent-clone-mandatory") in text
    assert not any("haven-network-agent" in t for t in lines(plan(hypervisors=())))


def test_router_nodes_run_a_network_agent_and_shards_go_where_it_runs() -> None:
    # n1 is no hypervisor but may carry routers: its agent makes their bridges
    text = lines(plan())
    assert not any("haven-network-agent-clone n1" in t for t in text)
    assert ("pcs constraint colocation add haven-l3-0 with haven-network-agent-clone INFINITY "
            "id=colocation-haven-l3-0-haven-network-agent-clone-INFINITY") in text
    assert ("pcs constraint order start haven-network-agent-clone then start haven-l3-0 "
            "kind=Optional id=order-haven-network-agent-clone-haven-l3-0-Optional") in text
    only_n2 = lines(plan(network_nodes=("n2",)))
    assert ("pcs constraint location add location-haven-network-agent-clone-n1--INFINITY "
            "haven-network-agent-clone n1 -- -INFINITY") in only_n2


@pytest.mark.parametrize(("kw", "message"), [
    ({"nodes": ("a", "a")}, "distinct"),
    ({"vip": "10.0.0.1"}, "ADDRESS/PREFIX"),
    ({"hypervisors": ("zz",)}, "not in nodes"),
])
def test_bad_plans_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan(**kw)


def test_script_is_runnable_shell() -> None:
    script = render_script(all_commands(plan()))
    assert script.startswith("#!/bin/sh\n")
    assert "set -e" in script


def test_cli_prints_the_script_and_refuses_bad_plans(tmp_path: object,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    from ha.cli import main

    base = Path(str(tmp_path))
    good = base / "plan.yaml"
    good.write_text("nodes: [n1, n2]\nvip: 10.213.0.100/24\nvip_nic: eth0\n")
    assert main(["cluster", "script", "--plan", str(good)]) == 0
    assert "ocf:heartbeat:galera" in capsys.readouterr().out
    for text, message in (("nodes: [n1]\nvip: x\nvip_nic: e\n", "ADDRESS/PREFIX"),
                          ("nodes: [n1]\nvip: 1.2.3.4/24\nvip_nic: e\nextra: 1\n",
                           "extra: unknown plan key"),
                          ("nodes: [n1]\n", "vip: required")):
        bad = base / "bad.yaml"
        bad.write_text(text)
        assert main(["cluster", "script", "--plan", str(bad)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_one_evacuation_controller_runs_with_hypervisors_and_after_the_compute_api() -> None:
    from ha.bootstrap.cib import ClusterPlan, all_commands

    plan = ClusterPlan(nodes=("a", "b"), vip="10.0.0.9/24", vip_nic="eth0", hypervisors=("b",))
    commands = [" ".join(c) for c in all_commands(plan)]
    creates = [c for c in commands if c.startswith("pcs resource create haven-evacuator ")]
    assert len(creates) == 1 and " clone" not in creates[0]  # a primitive: never two
    assert ("pcs constraint order start haven-compute-api-clone then start haven-evacuator "
            "id=order-haven-compute-api-clone-haven-evacuator-mandatory" in commands)
    alerts = [c for c in commands if c.startswith("pcs alert create ")]
    assert len(alerts) == 1 and "path=/usr/lib/haven/alerts/haven-evacuator-wake" in alerts[0]
    plain = ClusterPlan(nodes=("a", "b"), vip="10.0.0.9/24", vip_nic="eth0")
    assert not any("haven-evacuator" in " ".join(c) for c in all_commands(plain))


def test_every_created_object_is_named_by_id_and_no_id_is_used_twice() -> None:
    """A rerun keeps objects by id (ha.bootstrap.run), so every resource, constraint and
    alert command names one, and no two name the same."""
    from ha.bootstrap.cib import created_object

    commands = all_commands(plan())
    objects = [created_object(c) for c in commands]
    named = [o for o in objects if o is not None]
    assert len({(o.section, o.id) for o in named}) == len(named)
    assert {o.section for o in named} == {"resources", "constraints", "alerts"}
    for command, obj in zip(commands, objects, strict=True):
        if command[1] in ("constraint", "alert") or command[2] == "create":
            assert obj is not None, command
    with pytest.raises(ValueError, match="without an id"):
        created_object(["pcs", "constraint", "order", "start", "a", "then", "start", "b"])


def test_no_service_waits_for_or_stops_with_its_nodes_broker() -> None:
    """A broker restart (rabbitmq-cluster's monitor fails now and then under load) must
    not restart the APIs of that node and move the VIP with them, and a rejoining node's
    services must not wait for its broker's wipe-and-rejoin (any broker serves them):
    the only order after rabbitmq-clone is the bus's own membership helper's."""
    commands = all_commands(plan())
    after_bus = [c for c in commands if c[:5] == ["pcs", "constraint", "order", "start",
                                                   "rabbitmq-clone"]]
    assert [c[7] for c in after_bus] == ["bus-members-clone"]


def test_a_rerun_retires_the_bus_orders_of_before() -> None:
    from ha.bootstrap.cib import created_object, deleted_object, retired_constraints
    retired = retired_constraints(plan())
    ids = {obj.id for c in retired if (obj := deleted_object(c)) is not None}
    assert "order-rabbitmq-clone-haven-identity-clone-mandatory" in ids
    assert "order-rabbitmq-clone-haven-compute-clone-mandatory" in ids
    assert "order-rabbitmq-clone-haven-identity-clone-Optional" in ids
    assert "order-rabbitmq-clone-haven-network-agent-clone-Optional" in ids
    created = {obj.id for c in all_commands(plan()) if (obj := created_object(c))}
    assert ids.isdisjoint(created)


def test_network_agents_run_on_hypervisors_unless_the_plan_turns_them_off() -> None:
    on = [c for c in lines(plan(l3_shards=0)) if "haven-network-agent" in c]
    assert any(c.startswith("pcs resource create haven-network-agent ") for c in on)
    assert any("location-haven-network-agent-clone-n1--INFINITY" in c for c in on)
    off = [c for c in lines(plan(network_agents=False, l3_shards=0))
           if "haven-network-agent" in c or "haven-l3" in c]
    assert off == []

"""The lab's pure parts: node plans, corosync.conf, /etc/hosts, qemu.conf, the mount
plan, the seed CIB, fencing commands, and the parsers of crm_mon, stonith_admin,
/proc and the power log. No namespaces, no root: milliseconds."""

from __future__ import annotations

import os
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from ha import crm
from ha.cli import main
from ha.lab import config, faults, proc, state
from ha.lab.power import parse_power_log


def test_plan_names_ids_addresses_and_short_interface_names() -> None:
    plans = config.plan_nodes(3)
    assert [p.name for p in plans] == ["node1", "node2", "node3"]
    assert [p.nodeid for p in plans] == [1, 2, 3]  # corosync reserves 0
    assert [p.address for p in plans] == ["10.213.0.11", "10.213.0.12", "10.213.0.13"]
    assert [p.netns for p in plans] == ["hvl-node1", "hvl-node2", "hvl-node3"]
    biggest = config.plan_nodes(config.MAX_NODES)
    assert all(len(p.veth) <= config.IFNAMSIZ for p in biggest)
    assert len({p.address for p in biggest}) == config.MAX_NODES


@pytest.mark.parametrize(("count", "subnet", "message"), [
    (0, config.DEFAULT_SUBNET, "between 1 and"),
    (config.MAX_NODES + 1, config.DEFAULT_SUBNET, "between 1 and"),
    (3, "10.213.0.0/29", "too small"),
    (3, "not-a-subnet", "bad lab subnet"),
])
def test_plans_that_cannot_be_built_are_refused(count: int, subnet: str, message: str) -> None:
    with pytest.raises(config.PlanError, match=message):
        config.plan_nodes(count, subnet)


def test_corosync_conf_puts_every_brace_at_a_line_end_and_lists_every_node() -> None:
    text = config.corosync_conf("haven-lab", config.plan_nodes(3), token_ms=3000)
    for line in text.splitlines():
        if "{" in line:
            assert line.rstrip().endswith("{"), line  # corosync's parser wants this
    assert text.count("{") == text.count("}")
    assert "    token: 3000" in text
    assert "    token_coefficient: 0" in text  # the token is the one asked for
    assert "cluster_name: haven-lab" in text
    for name, address in (("node1", "10.213.0.11"), ("node3", "10.213.0.13")):
        assert f"name: {name}" in text and f"ring0_addr: {address}" in text
    assert "two_node" not in text
    assert "crypto_cipher: aes256" in text  # the shared authkey is used
    assert "logfile: /var/log/corosync/corosync.log" in text


def test_two_nodes_keep_quorum_with_one_survivor() -> None:
    assert "two_node: 1" in config.corosync_conf("c", config.plan_nodes(2))


def test_hosts_file_resolves_every_node_and_localhost() -> None:
    text = config.hosts_file(config.plan_nodes(3))
    assert "127.0.0.1\tlocalhost" in text
    assert "10.213.0.12\tnode2" in text and "10.213.0.13\tnode3" in text


def test_init_mounts_fresh_tmpfs_private_copies_and_the_agent_overlay(tmp_path: Path) -> None:
    mounts = config.init_mounts(tmp_path / "root", tmp_path / "sbin", checkout=Path("/srv/h"))
    by_target = {m["target"]: m for m in mounts}
    for fresh in ("/run", "/dev/shm", "/tmp"):
        assert by_target[fresh]["kind"] == "tmpfs"
    for private in ("/etc/corosync", "/var/lib/pacemaker", "/var/lib/corosync", "/var/log",
                    "/etc/hosts", "/var/lib/libvirt", "/etc/libvirt", "/var/cache/libvirt",
                    "/var/lib/mysql", "/etc/mysql", "/var/lib/rabbitmq", "/etc/rabbitmq",
                    "/var/lib/haven"):
        assert by_target[private]["kind"] == "bind"
        assert by_target[private]["source"] == str(tmp_path / "root" / private.lstrip("/"))
    # every node in a zone other than UTC (Pacemaker then prints offsets)
    zone = by_target["/etc/localtime"]
    assert zone["kind"] == "bind" and Path(zone["source"]).is_file()
    assert zone["source"] == "/usr/share/zoneinfo/" + config.NODE_TIMEZONE
    assert "UTC" not in config.NODE_TIMEZONE
    # /run first: later mounts must not land in the host's /run.
    assert mounts[0]["target"] == "/run"
    assert mounts[-1] == {"kind": "overlay", "target": "/usr/sbin", "source": "overlay",
                          "options": f"lowerdir={tmp_path / 'sbin'}:/usr/sbin"}


def test_seed_cib_adds_properties_to_cibadmins_skeleton() -> None:
    empty = ('<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="1" '
             'num_updates="0" admin_epoch="0"><configuration><crm_config/><nodes/>'
             "<resources/><constraints/></configuration><status/></cib>")
    root = ET.fromstring(config.seed_cib(empty, {"dc-deadtime": "5s"}))
    assert root.get("validate-with") == "pacemaker-3.9"
    pair = root.find("configuration/crm_config/cluster_property_set/nvpair")
    assert pair is not None
    assert (pair.get("name"), pair.get("value")) == ("dc-deadtime", "5s")
    with pytest.raises(config.PlanError):
        config.seed_cib("<cib/>", {})


def test_fencing_commands_one_device_per_node_that_fences_only_its_node() -> None:
    commands = config.pcs_fencing_commands(config.plan_nodes(2), Path("/lab/power.sock"))
    assert commands[0][:3] == ["pcs", "property", "set"]
    assert "stonith-enabled=true" in commands[0] and "stonith-action=off" in commands[0]
    create = commands[2]
    assert create[:5] == ["pcs", "stonith", "create", "fence-node2", "fence_haven_lab"]
    assert "plug=node2" in create and "pcmk_host_list=node2" in create
    assert "socket=/lab/power.sock" in create
    script = config.script(commands)
    assert script.count("\n") == 3 and "pcs stonith create fence-node1" in script
    with pytest.raises(config.PlanError):
        config.pcs_fencing_commands(config.plan_nodes(1), Path("/s"), "cycle")


CRM_MON = """<pacemaker-result api-version="2.25" request="crm_mon -1 --output-as=xml">
  <summary>
    <current_dc present="true" version="2.1.5" name="node1" id="1" with_quorum="true"/>
  </summary>
  <nodes>
    <node name="node1" id="1" online="true" standby="false" unclean="false"/>
    <node name="node2" id="2" online="false" standby="false" unclean="true"/>
    <node name="node3" id="3" online="true" standby="false" unclean="false"/>
  </nodes>
  <resources>
    <resource id="fence-node1" resource_agent="stonith:fence_haven_lab" role="Started"
              active="true" failed="false"><node name="node3" id="3" cached="true"/></resource>
    <resource id="dummy" resource_agent="ocf:pacemaker:Dummy" role="Started" active="true"
              failed="false"><node name="node2" id="2" cached="true"/></resource>
    <resource id="stopped" resource_agent="ocf:pacemaker:Dummy" role="Stopped"
              active="false" failed="false"/>
    <group id="grp" number_resources="1">
      <resource id="grp-a" resource_agent="ocf:pacemaker:Dummy" role="Started" active="true"
                failed="false"><node name="node3" id="3" cached="true"/></resource>
    </group>
  </resources>
  <status code="0" message="OK"/>
</pacemaker-result>"""


def test_crm_mon_view_nodes_dc_quorum_and_where_resources_run() -> None:
    view = crm.parse_crm_mon(CRM_MON)
    assert view.dc == "node1" and view.quorum
    assert view.online == ["node1", "node3"]
    assert view.nodes["node2"].unclean
    assert view.running_on("dummy") == ("node2",)
    assert view.running_on("grp-a") == ("node3",)  # inside a group
    assert view.running_on("stopped") == ()
    assert view.running_on("nosuch") == ()


def test_crm_mon_without_a_dc_has_no_quorum() -> None:
    xml = ('<pacemaker-result><summary><current_dc present="false"/></summary>'
           '<nodes/><resources/></pacemaker-result>')
    view = crm.parse_crm_mon(xml)
    assert view.dc is None and not view.quorum and view.online == []


def test_fence_history_lists_every_event() -> None:
    xml = """<pacemaker-result api-version="2.25" request="stonith_admin --history *">
  <list name="fencing history" count="2">
    <fence_event action="off" target="node3" client="pacemaker-controld.43" origin="node2"
                 status="success" delegate="node1" completed="2026-11-25 17:37:40Z"/>
    <fence_event action="off" target="node1" client="pacemaker-controld.43" origin="node2"
                 status="failed" delegate="node3" completed="2026-11-25 17:37:18Z"/>
  </list>
  <status code="0" message="OK"/>
</pacemaker-result>"""
    events = crm.parse_fence_history(xml)
    assert [(e.action, e.target, e.succeeded, e.delegate) for e in events] == [
        ("off", "node3", True, "node1"), ("off", "node1", False, "node3")]


def test_proc_stat_survives_odd_process_names() -> None:
    text = "1234 (we (ird) name) S 1 1234 1234 0 -1 4194560 " + " ".join(["0"] * 12) + " 98765 9"
    st = proc.parse_stat(text)
    assert (st.comm, st.state, st.ppid, st.start_time) == ("we (ird) name", "S", 1, 98765)
    own = proc.stat(os.getpid())
    assert own is not None and proc.alive(os.getpid(), own.start_time)
    assert not proc.alive(os.getpid(), own.start_time + 1)  # same PID, another process
    assert not proc.alive(None, None)


def test_mount_points_unescape_mountinfo() -> None:
    text = ("22 1 8:1 / / rw - ext4 /dev/vda rw\n"
            "40 22 0:5 / /var/lib/haven-lab/with\\040space rw - tmpfs tmpfs rw\n")
    assert proc.mount_points(text) == ["/", "/var/lib/haven-lab/with space"]


def test_kill_service_matches_the_kernels_15_character_names() -> None:
    own = proc.stat(os.getpid())
    assert own is not None
    assert faults.matching([os.getpid()], own.comm) == [os.getpid()]
    assert faults.matching([os.getpid()], own.comm + "-and-more-than-fifteen") == (
        [os.getpid()] if len(own.comm) == faults.COMM_LEN else [])
    assert faults.matching([os.getpid()], "surely-not-this") == []


def test_power_log_tells_fences_from_nodes_and_operator_requests() -> None:
    text = ("2026-11-25 17:36:26,266 INFO power switch up on /x/power.sock (pid 29110)\n"
            "2026-11-25 17:37:18,896 INFO off node1 (requested by pid 30569 on node3)\n"
            "2026-11-25 17:37:18,911 INFO off node1 done (already)\n"
            "2026-11-25 17:37:46,740 INFO on node3 (requested by pid 31230 on host)\n")
    assert [(r.action, r.node, r.requester) for r in parse_power_log(text)] == [
        ("off", "node1", "node3"), ("on", "node3", "host")]


def test_state_round_trips_and_names_unknown_nodes(tmp_path: Path) -> None:
    plans = config.plan_nodes(2)
    st = state.LabState(lab_dir=str(tmp_path), cluster_name="c", subnet=config.DEFAULT_SUBNET,
                        switch_ns="hvl-switch", bridge="br0", token_ms=3000, libvirt=False,
                        fence_action="off",
                        nodes={p.name: state.NodeState(p.name, p.nodeid, p.address, p.netns,
                                                       p.veth) for p in plans})
    state.save(st)
    with state.updating(tmp_path) as loaded:
        loaded.nodes["node2"].init_pid = 42
    again = state.load(tmp_path)
    assert again is not None and again.nodes["node2"].init_pid == 42
    assert again.socket_path == tmp_path / "power.sock"
    with pytest.raises(state.UnknownNodeError, match="node1, node2"):
        again.node("node9")
    with pytest.raises(state.NoLabError), state.updating(tmp_path / "elsewhere"):
        pass


@pytest.mark.parametrize("argv", [
    ["lab", "status"],
    ["lab", "freeze", "node1"],
    ["lab", "exec", "node1", "--", "true"],
    ["lab", "up", "--nodes", "0"],
])
def test_cli_operator_errors_are_one_line_and_exit_2(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--lab-dir", str(tmp_path / "lab")] if argv[1] != "exec"
                else [*argv[:2], "--lab-dir", str(tmp_path / "lab"), *argv[2:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("haven: error: ") and err.count("\n") == 1


def test_down_aimed_at_an_empty_directory_touches_no_namespace(tmp_path: Path) -> None:
    """Only ``--force`` (or remains of a lab in that directory) reaches for every
    hvl-* namespace: a down aimed elsewhere must not break a running lab."""
    from ha.lab import lifecycle

    assert lifecycle.lab_namespaces(tmp_path / "never", None, force=False) == []
    assert main(["lab", "down", "--lab-dir", str(tmp_path / "never")]) == 0


def test_down_unmounts_only_the_namespaces_it_removes(tmp_path: Path) -> None:
    """Regression: ``down`` lazily unmounted every /run/netns/hvl-* mount, so this
    very unit suite's ``down`` of an empty directory cut a running lab's namespaces
    off (``ip netns exec``: "Invalid argument"), mid-benchmark."""
    from ha.lab import lifecycle

    info = ("36 25 0:4 net:[4026532] /run/netns/hvl-switch rw shared:5 - nsfs nsfs rw\n"
            "37 25 0:4 net:[4026533] /run/netns/hvl-node1 rw shared:5 - nsfs nsfs rw\n"
            f"38 25 8:1 /x {tmp_path}/lab/nodes rw shared:6 - ext4 /dev/vda rw\n")
    assert lifecycle.lab_mounts(tmp_path / "never", [], info) == []
    assert lifecycle.lab_mounts(tmp_path / "lab", ["hvl-node1"], info) == [
        "/run/netns/hvl-node1", f"{tmp_path}/lab/nodes"]


def test_a_checkout_under_tmp_stays_visible_in_the_nodes(tmp_path: Path) -> None:
    """A CI clone in /tmp: bound aside before the node's fresh /tmp, bound back after."""
    checkout = Path("/tmp/ci-clone")
    mounts = config.init_mounts(tmp_path / "root", tmp_path / "sbin", checkout=checkout)
    holding = str(tmp_path / "root" / "checkout")
    targets = [m["target"] for m in mounts]
    assert mounts[0] == {"kind": "bind", "source": str(checkout), "target": holding,
                         "options": "", "mkdir": "yes"}
    back = targets.index(str(checkout))
    assert back > targets.index("/tmp")
    assert mounts[back] == {"kind": "bind", "source": holding, "target": str(checkout),
                            "options": "", "mkdir": "yes"}
    # a checkout elsewhere needs neither
    plain = config.init_mounts(tmp_path / "root", tmp_path / "sbin", checkout=Path("/srv/x"))
    assert holding not in [m["target"] for m in plain]

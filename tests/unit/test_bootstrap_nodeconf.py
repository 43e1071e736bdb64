"""Node configuration and the staged bootstrap's rules, without a cluster (the lab
tests run them for real: tests/lab/test_stack.py)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from core.common.config import load_config
from ha.bootstrap import nodeconf
from ha.bootstrap.cib import ClusterPlan, Fed
from ha.bootstrap.run import Bootstrap, BootstrapError, database_commands
from ha.bootstrap.tls import new_ca

PLAN = ClusterPlan(nodes=("n1", "n2", "n3"), vip="10.9.0.100/24", vip_nic="eth0",
                   addresses={"n1": "10.9.0.1", "n2": "10.9.0.2", "n3": "10.9.0.3"},
                   hypervisors=("n2",), shared_dir="/srv/haven",
                   compute_overrides={"heartbeat_interval": 2})
SECRETS = nodeconf.Secrets(db_password="d'b", bus_password="b", service_password="s",
                           erlang_cookie="COOKIE")
CA = new_ca("test")


def test_galera_config_names_every_member_and_the_fast_eviction_timeouts() -> None:
    text = nodeconf.galera_cnf(PLAN, "n2")
    assert "wsrep_cluster_address = gcomm://n1,n2,n3" in text
    assert "wsrep_node_address = 10.9.0.2" in text and "bind-address = 10.9.0.2" in text
    assert "binlog_format = ROW" in text and "innodb_autoinc_lock_mode = 2" in text
    assert "evs.suspect_timeout=PT3S" in text and "evs.inactive_timeout=PT6S" in text


def test_galera_replicates_transfers_state_and_serves_clients_over_tls() -> None:
    text = nodeconf.galera_cnf(PLAN, "n2")
    tls = nodeconf.MYSQL_TLS_DIR
    assert (f"socket.ssl_key={tls}/node.key;socket.ssl_cert={tls}/node.crt;"
            f"socket.ssl_ca={tls}/ca.crt") in text
    sst = text.split("[sst]", 1)[1]
    assert f"tkey = {tls}/node.key" in sst and f"tca = {tls}/ca.crt" in sst
    assert "ssl-mode = VERIFY_CA" in sst  # wsrep_sst_rsync: stunnel, or no transfer
    assert "require_secure_transport = ON" in text.split("[galera]", 1)[0]
    cfg = yaml.safe_load(nodeconf.haven_config(PLAN, "n2", SECRETS))
    assert cfg["database"]["ssl_ca"] == nodeconf.TLS_CA
    files = nodeconf.node_files(PLAN, "n2", SECRETS, CA)
    assert files[f"{tls}/node.key"][1] == 0o600 and nodeconf.OWNERS[f"{tls}/"] == "mysql"


def test_rabbitmq_gets_its_user_a_short_net_ticktime_and_pauses_a_minority() -> None:
    assert "default_user = haven" in nodeconf.rabbitmq_conf(SECRETS)
    assert "cluster_partition_handling = pause_minority" in nodeconf.rabbitmq_conf(SECRETS)
    assert "{net_ticktime, 10}" in nodeconf.rabbitmq_advanced(3)


FIVE = ClusterPlan(nodes=("n1", "n2", "n3", "n4", "n5"), vip="10.9.0.100/24", vip_nic="eth0")


def erlang_terms(text: str, tmp_path: Path, vm_args: str = "") -> str:
    """``text`` read by the installed Erlang VM as a config file (file:consult, as the
    broker reads advanced.config), started with ``vm_args``: the terms it read, printed."""
    erl = shutil.which("erl")
    if erl is None:
        pytest.fail("erl is not installed (Debian's erlang-base, a rabbitmq-server dependency)")
    path = tmp_path / "advanced.config"
    path.write_text(text)
    result = subprocess.run(
        [erl, "-noshell", *vm_args.split(), "-eval",
         f'{{ok, T}} = file:consult("{path}"), io:format("~w", [T]), halt().'],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr or result.stdout
    return result.stdout


def test_every_quorum_queue_has_a_member_on_every_broker(tmp_path: Path) -> None:
    """Five nodes: RabbitMQ's default (3 members) would let a frozen node and a cut one
    take a queue's majority while three brokers still run."""
    advanced = nodeconf.node_files(FIVE, "n4", SECRETS, CA)[nodeconf.RABBITMQ_ADVANCED][0]
    assert erlang_terms(advanced, tmp_path) == (
        "[[{kernel,[{net_ticktime,10}]},{rabbit,[{quorum_cluster_size,5}]}]]")
    three = nodeconf.node_files(PLAN, "n1", SECRETS, CA)[nodeconf.RABBITMQ_ADVANCED][0]
    assert "{quorum_cluster_size, 3}" in three
    with pytest.raises(ValueError, match="at least 1"):
        nodeconf.rabbitmq_advanced(0)


def test_the_broker_vm_does_not_busy_wait(tmp_path: Path) -> None:
    env = nodeconf.node_files(PLAN, "n1", SECRETS, CA)[nodeconf.RABBITMQ_ENV][0]
    server = next(line for line in env.splitlines()
                  if line.startswith("SERVER_ADDITIONAL_ERL_ARGS="))
    args = server.split("=", 1)[1].strip('"').split()
    for flag in ("+sbwt", "+sbwtdcpu", "+sbwtdio"):
        assert args[args.index(flag) + 1] == "none", (flag, args)
    ctl = next(line for line in env.splitlines() if line.startswith("CTL_ERL_ARGS="))
    assert "+sbwt" not in ctl  # the CLI's short-lived VM keeps its defaults
    # and the installed VM accepts them (an unknown flag would stop it from starting)
    assert erlang_terms("ok.\n", tmp_path, nodeconf.RABBITMQ_VM_ARGS) == "[ok]"


def test_rabbitmq_is_amqps_only_and_clusters_over_tls() -> None:
    conf = nodeconf.rabbitmq_conf(SECRETS)
    assert "listeners.tcp = none" in conf and "listeners.ssl.default = 5671" in conf
    assert "ssl_options.verify = verify_peer" in conf
    env = nodeconf.rabbitmq_env()
    args = f"-proto_dist inet_tls -ssl_dist_optfile {nodeconf.RABBITMQ_DIST_TLS}"
    assert f'SERVER_ADDITIONAL_ERL_ARGS="{args} ' in env and f'CTL_ERL_ARGS="{args}"' in env
    files = nodeconf.node_files(PLAN, "n1", SECRETS, CA)
    assert "{fail_if_no_peer_cert, true}" in files[nodeconf.RABBITMQ_DIST_TLS][0]


def test_haven_config_is_valid_uses_the_local_database_every_broker_and_the_vip(
        tmp_path: Path) -> None:
    path = tmp_path / "haven.yaml"
    path.write_text(nodeconf.haven_config(PLAN, "n2", SECRETS))
    cfg = load_config(str(path))  # the real loader: unknown keys or bad types would fail
    assert cfg.database.url is not None and "@10.9.0.2/haven" in cfg.database.url
    assert "haven:d%27b@" in cfg.database.url  # passwords are URL-quoted
    assert [u.split("@")[1] for u in cfg.bus.urls] == ["n2:5671/%2F", "n1:5671/%2F",
                                                        "n3:5671/%2F"]
    assert all(u.startswith("amqps://") for u in cfg.bus.urls)  # TLS to every broker
    assert cfg.catalog.public_host == "10.9.0.100"
    assert (cfg.tls.scheme, cfg.tls.ca_file, cfg.tls.cert_file, cfg.tls.key_file) == (
        "https", nodeconf.TLS_CA, nodeconf.TLS_CERT, nodeconf.TLS_KEY)
    assert cfg.compute.instances_dir == "/srv/haven/instances"
    assert cfg.compute.heartbeat_interval == 2  # n2 is a hypervisor: overrides apply
    other = yaml.safe_load(nodeconf.haven_config(PLAN, "n1", SECRETS))
    assert "heartbeat_interval" not in other["compute"]


def test_node_files_refuse_a_stranger_and_the_cookie_is_private(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a node"):
        nodeconf.node_files(PLAN, "n9", SECRETS, CA)
    written = nodeconf.write_node_files(PLAN, "n1", SECRETS, CA, tmp_path)
    cookie = tmp_path / nodeconf.ERLANG_COOKIE.lstrip("/")
    assert cookie in written and oct(cookie.stat().st_mode & 0o777) == "0o400"
    nodeconf.write_node_files(PLAN, "n1", SECRETS, CA, tmp_path)  # rewriting a 0400 file works


def test_database_commands_quote_the_password_and_need_one() -> None:
    fed = database_commands(PLAN, "haven", "mysql+pymysql://haven:d%27b@h/haven")[0]
    assert isinstance(fed, Fed) and fed.argv == ["mysql", "--batch"]
    assert "IDENTIFIED BY 'd\\'b'" in fed.stdin
    with pytest.raises(BootstrapError, match="user and a password"):
        database_commands(PLAN, "haven", "mysql+pymysql://h/haven")


EMPTY_CIB = "<cib><configuration><resources/><constraints/></configuration></cib>"


def test_a_failing_command_stops_the_bootstrap_with_pcs_own_words() -> None:
    """(The rerun's keeping of existing objects runs the real pcs: test_bootstrap_pcs.)"""
    def runner(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if argv[0] == "cibadmin":
            return subprocess.CompletedProcess(list(argv), 0, EMPTY_CIB, "")
        return subprocess.CompletedProcess(list(argv), 1, "", "Error: Agent 'x' not found\n")
    with pytest.raises(BootstrapError, match="Agent 'x' not found"):
        Bootstrap(PLAN, runner=runner).execute(["pcs", "resource", "create", "r", "x"])


def test_a_hypervisor_gets_disk_leases_on_the_shared_instances(tmp_path: Path) -> None:
    """A hypervisor's libvirt runs QEMU unprivileged with leases in the lockspace on
    the shared storage; a node that is not one keeps its libvirt as it was."""
    from core.compute.virt import hostconf

    nodeconf.write_node_files(PLAN, "n2", SECRETS, CA, tmp_path)
    etc = tmp_path / "etc" / "libvirt"
    assert hostconf.missing_settings(etc, Path("/srv/haven/instances/.leases")) == []
    nodeconf.write_node_files(PLAN, "n1", SECRETS, CA, tmp_path / "n1")
    assert not (tmp_path / "n1" / "etc" / "libvirt").exists()


def test_hypervisors_wait_for_their_ports_only_where_a_network_agent_plugs_them(
        tmp_path: Path) -> None:
    path = tmp_path / "haven.yaml"
    path.write_text(nodeconf.haven_config(PLAN, "n2", SECRETS))
    assert load_config(str(path)).compute.vif_plugging_timeout == 300
    without = dataclasses.replace(PLAN, network_agents=False, l3_shards=0)
    path.write_text(nodeconf.haven_config(without, "n2", SECRETS))
    assert load_config(str(path)).compute.vif_plugging_timeout == 0


def test_network_agents_tunnel_over_the_cluster_network_and_map_the_plans_interfaces(
        tmp_path: Path) -> None:
    path = tmp_path / "haven.yaml"
    plan = dataclasses.replace(PLAN, physical_interfaces={"provider": "eth1"})
    path.write_text(nodeconf.haven_config(plan, "n2", SECRETS))
    datapath = load_config(str(path)).network.datapath
    assert (datapath.local_ip, datapath.physical_interface_mappings) == (
        "10.9.0.2", ["provider:eth1"])

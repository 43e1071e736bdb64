"""The whole Haven stack on a real 3-node lab: Galera, RabbitMQ, every Haven service
as a Pacemaker clone, the VIP; real openstack clients, real faults.

One lab serves the module (``haven lab up --libvirt`` then ``haven lab stack``,
about 2 minutes). The power-loss test runs last: it leaves a node fenced off.
Every wait is bounded and waits on a fact (crm_mon, the API, the database).

Durability and the lab: every lab node shares this machine's kernel, so a lab
"power loss" (SIGKILL of the node's init) never loses a write the node had only
in the page cache: a test that reads the killed node's own files after it comes
back proves nothing about fsync. The tests here never do. The Galera test reads
acknowledged rows on the *survivors* only (what certification-based replication
promises: the write set is on every member before the commit returns); the
power-loss test judges every acknowledged API write through the VIP, served by
the survivors' databases after the VIP node is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha import crm, service_agent
from ha.bootstrap import nodeconf
from ha.lab import faults, node, proc, stack, state
from ha.lab.commands import wait_until
from tests.lab.conftest import lab_unavailable
from tests.lab.labtools import StackLab, stack_session
from tests.lab.ledger import Outcome, Seen, Verdict, judge, outcome, read_ledger
from tests.lab.tenant import Tenant, shard_node, shard_resource

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(lab_unavailable() is not None,
                                 reason=f"no lab here: {lab_unavailable()}")]

LAB_DIR = state.default_lab_dir()
NODES = ["node1", "node2", "node3"]
REPO = Path(__file__).resolve().parents[2]
TIMINGS: dict[str, str] = {}


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[StackLab]:
    with stack_session(request, "stack lab", TIMINGS) as shared:
        yield shared


def test_the_stack_runs_everywhere_and_openstack_works_through_the_vip(lab: StackLab) -> None:
    view = lab.wait_stack(NODES, 120)
    # the resources that run are the ones the bootstrap made, with the real agents
    assert {v.agent for v in view.instances["galera"]} == {"ocf:heartbeat:galera"}
    assert {v.agent for v in view.instances["haven-identity"]} == {"ocf:haven:haven-identity"}

    assert len(lab.openstack("token", "issue", "-f", "value", "-c", "id").strip()) > 20
    services = json.loads(lab.openstack("compute", "service", "list", "-f", "json"))
    assert sorted(s["Host"] for s in services) == NODES
    assert all(s["State"] == "up" for s in services)
    lab.tiny_image_id()
    t0 = time.monotonic()
    server = json.loads(lab.openstack("server", "create", "--image", "tiny", "--flavor",
                                      "m1.tiny", "--network", "provider", "--wait", "vm1",
                                      "-f", "json", timeout=180))
    TIMINGS["server create --wait through the VIP"] = f"{time.monotonic() - t0:.1f} s"
    assert server["status"] == "ACTIVE"
    host = server["OS-EXT-SRV-ATTR:host"]
    assert host in NODES
    # The guest really runs on that lab node's libvirtd, and prints its marker.
    domains = node.exec_in(lab.state().nodes[host], ["virsh", "list", "--name"]).stdout
    assert server["id"] in domains
    wait_until(lambda: "HAVEN-TINY-BOOTED" in lab.openstack("console", "log", "show", "vm1"),
               90, "the guest's boot marker on its console", interval=2)
    lab.openstack("server", "delete", "--wait", "vm1", timeout=120)
    assert lab.sql("node1", "SELECT COUNT(*) FROM instances WHERE deleted = 0") == ["0"]


def test_the_apis_are_https_only_and_verified_with_the_cluster_ca(lab: StackLab) -> None:
    """Issue 9: every endpoint in the catalog is https at the VIP, a plain-http
    request to an API port gets no answer, and a client that does not trust the
    cluster CA is refused (the openstack CLI above trusts it through clouds.yaml)."""
    lab.wait_stack(NODES, 120)
    vip = stack.vip_address(lab.state())
    ports = [str(p) for p in nodeconf.API_PORTS.values()]
    probe = json.loads(lab.client(sys.executable, "-m", "tests.lab.tls_probe",
                                  str(stack.paths(LAB_DIR).clouds_yaml), vip, *ports).stdout)
    assert probe["catalog"] and all(u.startswith(f"https://{vip}:") for u in probe["catalog"])
    assert sorted(probe["plain_http"]) == sorted(ports)
    assert "answered" not in probe["plain_http"].values(), probe
    assert probe["untrusted_https"] == {p: "SSLError" for p in ports}


BROKER_PROBE = """
import socket, ssl, sys
host, tls_port, plain_port, cafile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ctx = ssl.create_default_context(cafile=cafile)
with socket.create_connection((host, tls_port), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname=host) as tls:
        print(tls.version())
try:
    socket.create_connection((host, plain_port), timeout=10).close()
    print("plain-open")
except OSError:
    print("plain-closed")
"""


def test_the_brokers_speak_amqp_over_tls_only(lab: StackLab) -> None:
    """Issue 9: each broker's AMQP listener is TLS with a certificate of the
    cluster CA for its node name, and the plain-text port is closed."""
    lab.wait_stack(NODES, 120)
    for name in NODES:
        out = node.exec_in(lab.state().nodes["node1"], [
            "python3", "-c", BROKER_PROBE, name, str(nodeconf.AMQPS_PORT), "5672",
            nodeconf.TLS_CA]).stdout.split()
        assert out[0] in ("TLSv1.2", "TLSv1.3") and out[1] == "plain-closed", (name, out)
    # and the brokers talk to each other (clustering, quorum queues) over TLS
    links = node.exec_in(lab.state().nodes["node1"],
                         ["rabbitmqctl", "eval", "net_kernel:nodes_info()."], timeout=60).stdout
    for name in NODES[1:]:
        assert f'"{name}",tls,inet' in links, links


def test_the_brokers_give_every_quorum_queue_all_members_and_do_not_busy_wait(
        lab: StackLab) -> None:
    """Each broker runs with node-config's advanced.config and quorum_cluster_size
    (the cluster's size), every quorum queue Haven declared has a member on every
    broker, and the broker's Erlang VM runs with busy-waiting off.

    What this lab cannot tell apart: RabbitMQ's default quorum_cluster_size is 3,
    this lab's size, and RabbitMQ 3.10's own VM arguments already turn busy-waiting
    off; node-config writes both explicitly (for 5-node clusters, and whatever the
    packaged defaults become), and tests/unit/test_bootstrap_nodeconf.py is what
    fails without them. Here: the running brokers have the outcome, and loaded
    node-config's file (net_ticktime 10 is not a default)."""
    lab.wait_stack(NODES, 120)
    for name in NODES:
        nd = lab.state().nodes[name]
        env = node.exec_in(nd, ["rabbitmqctl", "eval",
                                "{application:get_env(rabbit, quorum_cluster_size), "
                                "net_kernel:get_net_ticktime()}."], timeout=60).stdout.strip()
        assert env == f"{{{{ok,{len(NODES)}}},{nodeconf.NET_TICKTIME_S}}}", (name, env)
        argvs = [proc.cmdline(pid) for pid in node.pids(nd)]
        beams = [a for a in argvs if a and a[0].endswith("beam.smp") and "rabbit" in a]
        assert len(beams) == 1, (name, beams)  # the broker (rabbitmqctl's VM is not -s rabbit)
        argv = beams[0]
        for flag in ("-sbwt", "-sbwtdcpu", "-sbwtdio"):  # erl passes +X to beam as -X
            assert flag in argv and argv[argv.index(flag) + 1] == "none", (name, flag, argv)
    queues = json.loads(node.exec_in(lab.state().nodes["node1"], [
        "rabbitmqctl", "list_queues", "name", "type", "members", "--formatter", "json"],
        timeout=60).stdout)
    quorum = [q for q in queues if q["type"] == "quorum"]
    assert quorum, queues  # Haven's services declared their queues
    for q in quorum:
        assert sorted(m.split("@", 1)[1] for m in q["members"]) == NODES, q


def test_galera_replicates_and_transfers_state_over_tls_and_haven_connects_with_tls(
        lab: StackLab) -> None:
    """Issue 9: Galera's group communication is TLS (socket.ssl), full state
    transfers went through stunnel, TCP clients must use TLS, and Haven's sessions
    are TLS sessions."""
    lab.wait_stack(NODES, 120)
    for name in NODES:
        options = node.exec_in(lab.state().nodes[name], [
            "mysql", "-N", "-B", "-e", "SHOW VARIABLES LIKE 'wsrep_provider_options'"]).stdout
        assert "socket.ssl = YES;" in options, (name, options)
        assert lab.sql(name, "SELECT @@require_secure_transport") == ["1"], name
        accepted = lab.sql(name, "SHOW GLOBAL STATUS LIKE 'Ssl_accepts'")
        assert int(accepted[1]) > 0, (name, accepted)  # Haven's connections to this node
    logs = [node.exec_in(lab.state().nodes[n], ["sh", "-c", "cat /var/log/mysqld.log "
                                                "/var/log/mysql/*.log 2>/dev/null"],
                         check=False).stdout for n in NODES]
    assert any("Using stunnel for SSL encryption" in text for text in logs)


def test_a_killed_service_process_is_restarted_by_pacemaker(lab: StackLab) -> None:
    lab.wait_stack(NODES, 120)
    victim = "node2"
    pids = faults.kill_service(LAB_DIR, victim, "serve identity")
    assert pids
    view = lab.wait_view(
        lambda v: any(f.resource == "haven-identity" and f.node == victim for f in v.failures)
        and victim in v.running_on("haven-identity"), 90,
        "haven-identity to fail and be restarted on node2")
    failure = next(f for f in view.failures if f.resource == "haven-identity")
    assert failure.task == "monitor"
    now = faults.matching(node.pids(lab.state().nodes[victim]), "serve identity")
    assert now and not set(now) & set(pids), (pids, now)  # a new process, not the old
    # A new process answers, and the status says what happened until cleaned up.
    nd = lab.state().nodes[victim]
    health = node.exec_in(nd, ["python3", "-c", "import ssl, urllib.request; urllib.request."
                               "urlopen('https://127.0.0.1:5000/healthcheck', timeout=5, "
                               "context=ssl.create_default_context(cafile="
                               f"'{nodeconf.TLS_CA}'))"], check=False)
    assert health.returncode == 0, health.stderr
    status = node.exec_in(nd, ["crm_mon", "-1"]).stdout
    assert "haven-identity" in status and "Failed Resource Actions" in status
    node.exec_in(nd, ["pcs", "resource", "cleanup", "haven-identity"])


def haven_processes(nd: state.NodeState) -> dict[str, set[int]]:
    """The PIDs of each Haven service on a node (the APIs' and the compute agent's:
    every one the bus orders), by their command lines."""
    lines = {svc: f"serve {name} --workers" for svc, name in service_agent.API_SERVICES.items()}
    lines["compute"] = "compute-agent --config"
    return {svc: set(faults.matching(node.pids(nd), line)) for svc, line in lines.items()}


def test_a_broker_restart_leaves_the_apis_and_the_vip_where_they_are(lab: StackLab) -> None:
    """The bus only orders the services' start: when Pacemaker restarts the broker of
    the VIP's node (its monitor fails: here the broker is killed), no API of that node
    is stopped and the VIP stays. A mandatory order made every such restart an API
    outage and a VIP move."""
    view = lab.wait_stack(NODES, 120)
    (vip_node,) = view.running_on("vip")
    nd = lab.state().nodes[vip_node]
    apis = haven_processes(nd)
    assert all(apis[svc] for svc in service_agent.API_SERVICES), apis
    brokers = set(faults.kill_service(LAB_DIR, vip_node, "beam.smp"))

    def broker_restarted(v: crm.ClusterView) -> bool:
        restarted = set(faults.matching(node.pids(nd), "beam.smp")) - brokers
        return (any(f.resource == "rabbitmq" and f.node == vip_node for f in v.failures)
                and vip_node in v.running_on("rabbitmq") and bool(restarted))

    view = lab.wait_view(broker_restarted, 300,
                         f"Pacemaker to notice and restart the broker of {vip_node}")
    assert view.running_on("vip") == (vip_node,)
    after = haven_processes(nd)
    assert after == apis, "an API of the VIP's node was restarted with its broker"
    assert not [f for f in view.failures if f.resource.startswith("haven-")], view.failures
    assert len(lab.openstack("token", "issue", "-f", "value", "-c", "id").strip()) > 20
    node.exec_in(nd, ["pcs", "resource", "cleanup", "rabbitmq"])
    lab.wait_view(lambda v: set(v.running_on("bus-members")) == set(NODES)
                  and set(v.running_on("rabbitmq")) == set(NODES), 180,
                  "the bus whole again")


DURABILITY_DB = "durability"
# The same rows go into two tables: one Galera replicates (InnoDB), one it does not
# (MyISAM: its writes stay on the node that took them). The second is the control:
# its acknowledged rows are missing on the survivors, which shows that this test
# sees a loss when there is one.
DURABILITY_TABLES = {"replicated": "InnoDB", "local_only": "MyISAM"}


def galera_primary(lab: StackLab, name: str, members: int) -> bool:
    """``name``'s Galera is in a primary component of ``members`` and takes queries."""
    out = node.exec_in(lab.state().nodes[name], [
        "mysql", "-N", "-B", "-e", "SHOW GLOBAL STATUS WHERE Variable_name IN "
        "('wsrep_cluster_status', 'wsrep_ready', 'wsrep_cluster_size')"], check=False).stdout
    status = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    return (status.get("wsrep_cluster_status") == "Primary" and status.get("wsrep_ready") == "ON"
            and status.get("wsrep_cluster_size") == str(members))


def rows_on(lab: StackLab, name: str, table: str) -> set[int]:
    """The ids in ``table`` on ``name``, read after the node has applied every write
    set it had received (wsrep_sync_wait: a causal read, not a stale one)."""
    out = node.exec_in(lab.state().nodes[name], [
        "mysql", "-N", "-B", DURABILITY_DB, "-e",
        f"SET SESSION wsrep_sync_wait = 1; SELECT id FROM {table}"]).stdout
    return {int(x) for x in out.split()}


def test_a_tenant_vm_is_reached_at_its_floating_ip_and_keeps_it_when_its_node_dies(
        lab: StackLab, tmp_path: Path) -> None:
    """The issue's tenant walk-through, verbatim CLI: key, network, router to the
    provider network, SSH allowed, a VM with the key and user data, a floating IP;
    SSH from outside the cloud (the provider network's own side) logs in with the key
    and finds the user data's proof. Then the router's shard is moved onto the VM's
    hypervisor and that node loses power: the router starts on a survivor (after the
    fence), the VM is evacuated to one, and the same floating IP reaches the same VM
    (its fixed address, its user data, its name) again."""
    lab.wait_stack(NODES, 180)
    tenant = Tenant(lab, tmp_path)
    server = tenant.build(lab.tiny_image_id())
    host, server_id = server["OS-EXT-SRV-ATTR:host"], server["id"]
    router_id = lab.openstack("router", "show", "r1", "-f", "value", "-c", "id").strip()
    keys = tenant.trust_host_key()
    t0 = time.monotonic()
    first = tenant.wait_reachable(240, "SSH to vm1 at its floating IP")
    TIMINGS["tenant VM: SSH at the floating IP after ACTIVE"] = f"{time.monotonic() - t0:.1f} s"
    assert first[0].startswith("10.0.0.") and first[1] == tenant.token, first

    # the router onto the VM's node, so one power loss takes both
    nd = lab.state().nodes[host]
    shard = shard_resource(router_id)
    if shard_node(lab, router_id) != host:
        node.exec_in(nd, ["pcs", "resource", "move", shard, host], timeout=60)
        lab.wait_view(lambda v: list(v.running_on(shard)) == [host], 120, f"{shard} on {host}")
        node.exec_in(nd, ["pcs", "resource", "clear", shard], timeout=60)
        tenant.wait_reachable(120, "SSH after the router moved")

    fences_before = len(lab.fences(host))
    assert faults.kill(LAB_DIR, host)
    t_kill = time.monotonic()
    tenant.trust_host_key(keys)  # the evacuated guest's boot
    again = tenant.wait_reachable(300, "SSH at the same floating IP after the node died")
    TIMINGS["tenant VM: node power loss to SSH at the floating IP again"] = \
        f"{time.monotonic() - t_kill:.1f} s"
    assert again == first, (first, again)  # the same VM: address, user data, name
    events = lab.wait_new_fence(host, fences_before, timeout=60)
    assert events[0].delegate != host, events
    moved = json.loads(lab.openstack("server", "show", server_id, "-f", "json"))
    assert moved["OS-EXT-SRV-ATTR:host"] not in ("", host), moved
    assert shard_node(lab, router_id) != host
    lab.power_on_all(120)
    lab.wait_stack(NODES, 300)
    lab.openstack("server", "delete", "--wait", "vm1", timeout=180)


def test_rows_committed_through_a_node_are_on_the_survivors_after_its_power_loss(
        lab: StackLab) -> None:
    """Galera durability, without the shared page cache.

    A writer commits rows one at a time through node A (its local mysqld) and
    reads each commit's acknowledgement; while it is still writing, A loses power
    (its link, then every process). Every row whose commit was acknowledged must
    be on each survivor once the survivors form the primary component.

    The lab's shared kernel cannot make this pass: the rows are read only on the
    survivors, never from A's datadir (A stays off until the check is done). They
    are there only if A's commit returned after the write set had reached the
    other members (certification-based replication, synchronous at commit), not
    after A wrote it to its own log. The MyISAM twin of the table, whose writes
    Galera does not replicate, shows the check failing: its acknowledged rows
    are missing on the survivors. Afterwards A is powered on again (after its
    new fence is in the stonith history) and the stack waits for it to rejoin.
    """
    view = lab.wait_stack(NODES, 180)
    vip = view.running_on("vip")[0]
    writer = next(n for n in NODES if n != vip)  # the VIP stays put for the tests after
    survivors = [n for n in NODES if n != writer]
    # Haven's own tables are all of the kind Galera replicates, like "replicated" here
    assert lab.sql(writer, "SELECT DISTINCT engine FROM information_schema.tables "
                           "WHERE table_schema = 'haven'") == ["InnoDB"]
    setup = [f"DROP DATABASE IF EXISTS {DURABILITY_DB}", f"CREATE DATABASE {DURABILITY_DB}"]
    setup += [f"CREATE TABLE {DURABILITY_DB}.{t} (id INT PRIMARY KEY) ENGINE={engine}"
              for t, engine in DURABILITY_TABLES.items()]
    node.exec_in(lab.state().nodes[writer], ["mysql", "-e", "; ".join(setup)])
    for name in survivors:  # the DDL replicates: an empty table is a real answer
        assert rows_on(lab, name, "local_only") == set()
    fences_before = len(lab.fences(writer))

    # One session, autocommit: each "SELECT i" line comes after row i's two
    # INSERTs returned, so a line read is an acknowledged commit.
    script = "".join(f"INSERT INTO replicated VALUES ({i}); INSERT INTO local_only VALUES "
                     f"({i}); SELECT {i};\n" for i in range(20000))
    nd = lab.state().nodes[writer]
    client = subprocess.Popen(
        node.nsenter_argv(node.require_running(nd),
                          ["mysql", "-N", "-B", "--unbuffered", DURABILITY_DB]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert client.stdin is not None and client.stdout is not None

    def feed() -> None:
        assert client.stdin is not None
        try:
            client.stdin.write(script)
            client.stdin.close()
        except (BrokenPipeError, ValueError):
            pass  # the node is gone, with the client in it
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    acked: set[int] = set()
    try:
        for line in client.stdout:  # the writer is still writing when the power goes
            acked.add(int(line))
            if len(acked) == 300:
                assert faults.kill(LAB_DIR, writer)
                break
        acked |= {int(line) for line in client.stdout}  # acknowledged before the kill
    finally:
        client.kill()
        client.wait(timeout=30)
    assert len(acked) >= 300, f"the writer stopped after {len(acked)} commits"

    for name in survivors:
        wait_until(lambda name=name: galera_primary(lab, name, len(survivors)), 60,
                   f"{name}'s Galera to be primary without {writer}")
    missing = {name: acked - rows_on(lab, name, "replicated") for name in survivors}
    TIMINGS["Galera: commits acknowledged by the node that lost power"] = str(len(acked))
    assert not any(missing.values()), f"acknowledged rows lost: {missing}"
    # the control: the same acknowledged commits, in a table Galera does not replicate
    for name in survivors:
        assert not acked & rows_on(lab, name, "local_only"), name

    events = lab.wait_new_fence(writer, fences_before, timeout=60)
    assert events[0].delegate in survivors, events
    t0 = time.monotonic()
    lab.power_on_all(120)
    lab.wait_stack(NODES, 300)
    TIMINGS["Galera: power-on to the whole stack running again"] = \
        f"{time.monotonic() - t0:.1f} s"
    node.exec_in(lab.state().nodes[vip], ["mysql", "-e", f"DROP DATABASE {DURABILITY_DB}"])


def unschedulable_flavor(lab: StackLab) -> str:
    """A flavor no lab hypervisor can hold (8192 MiB each, nothing reserved), so a
    server of it goes to ERROR at once: an acknowledged create, with no guest to boot."""
    return lab.openstack("flavor", "create", "--ram", "8200", "--vcpus", "1", "--disk", "1",
                         "w.unschedulable", "-f", "value", "-c", "id").strip()


def judge_through_the_vip(lab: StackLab, ledger: Path, env: dict[str, str]) -> Verdict:
    """Observe every object of ``ledger`` through the VIP and judge the writes."""
    out = ledger.with_suffix(".seen.json")
    password = stack.paths(LAB_DIR).admin_password.read_text().strip()
    subprocess.run(
        stack.client_argv(lab.state(), [sys.executable, "-m", "tests.lab.writes", "observe",
                                        stack.auth_url(lab.state()), password, str(ledger),
                                        str(out)]),
        cwd=REPO, env=env, check=True, timeout=300)
    seen = json.loads(out.read_text())
    return judge(read_ledger(ledger), [Seen.from_json(s) for s in seen["seen"]],
                 seen["listed_names"])


def test_power_loss_of_the_vip_node_under_load_loses_no_acknowledged_write(
        lab: StackLab, tmp_path: Path) -> None:
    """A client creates, updates and deletes projects, users, networks, ports,
    servers (with metadata) and images (with properties) through the VIP while the
    node holding it loses power; every write it saw acknowledged is judged at the
    end (tests/lab/ledger.py: a create found by id and in the list, an acknowledged
    delete gone, a 404 no unknown delete explains is a lost write, an acknowledged
    value is the one seen). The VIP node's Haven wrote through its own Galera
    member: this depends on Galera's synchronous replication (the test above), not
    on the page cache, as the judged state is read through the survivors.

    Then the judge is shown to see a loss: one acknowledged network's row is
    deleted behind the client's back, and the same observation and judge must
    report exactly it."""
    lab.wait_stack(NODES, 180)
    view = lab.view()
    assert view is not None
    victim = view.running_on("vip")[0]
    survivor = next(n for n in NODES if n != victim)
    fences_before = len(lab.fences(victim))
    flavor, image = unschedulable_flavor(lab), lab.tiny_image_id()
    ledger = tmp_path / "writes.jsonl"
    password = stack.paths(LAB_DIR).admin_password.read_text().strip()
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "REQUESTS_CA_BUNDLE": str(stack.paths(LAB_DIR).ca / "ca.crt")}
    churn = subprocess.Popen(
        stack.client_argv(lab.state(), [sys.executable, "-m", "tests.lab.writes", "churn",
                                        stack.auth_url(lab.state()), password, str(ledger),
                                        "240", image, flavor]),
        cwd=REPO, env=env)
    kinds = ("project", "user", "network", "port", "server", "image")

    def acknowledged_kinds(after: float) -> set[str]:
        writes = read_ledger(ledger) if ledger.exists() else []
        return {w.kind for w in writes
                if w.t > after and outcome(w.status) is Outcome.ACKNOWLEDGED}
    try:
        wait_until(lambda: acknowledged_kinds(0) >= set(kinds)
                   and len(read_ledger(ledger)) > 60, 90, "the client to get going")
        assert faults.kill(LAB_DIR, victim)
        t_kill = time.time()  # powered off: an answer after this is a survivor's
        # every service takes writes again through the VIP, then the client stops
        wait_until(lambda: acknowledged_kinds(t_kill) >= set(kinds), 120,
                   "an acknowledged write of every kind after the kill")
        (ledger.with_suffix(".stop")).touch()
        churn.wait(timeout=60)
    finally:
        churn.kill()
        churn.wait(timeout=30)
    writes = read_ledger(ledger)
    first = min(w.t for w in writes if w.t > t_kill and outcome(w.status) is Outcome.ACKNOWLEDGED)
    TIMINGS["VIP node power loss: first acknowledged write after the kill"] = \
        f"{first - t_kill:.1f} s"
    events = lab.wait_new_fence(victim, fences_before, timeout=60)
    assert events[0].delegate != victim, events

    verdict = judge_through_the_vip(lab, ledger, env)
    TIMINGS["VIP node power loss: the judge"] = verdict.summary()
    assert verdict.ok, "\n".join(verdict.lost)

    # The judge sees a loss: an acknowledged, never-deleted network disappears.
    deleted = {w.id for w in writes if w.op == "delete"}
    target = next(w for w in writes if w.kind == "network" and w.op == "create"
                  and outcome(w.status) is Outcome.ACKNOWLEDGED and w.id not in deleted
                  and not w.name.endswith("-ports"))
    lab.sql(survivor, f"DELETE FROM networks WHERE id = '{target.id}'")
    verdict = judge_through_the_vip(lab, ledger, env)
    assert [v.split(" (")[0] for v in verdict.lost] == [f"LOST CREATE: network {target.id}"], \
        verdict.lost
    lab.wait_stack([n for n in NODES if n != victim], 60)

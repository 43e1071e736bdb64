"""The whole Haven stack on a real 3-node lab: Galera, RabbitMQ, every Haven service
as a Pacemaker clone, the VIP; real openstack clients, real faults.

One lab serves the module (``haven lab up --libvirt`` then ``haven lab stack``,
about 2 minutes). The power-loss test runs last: it leaves a node fenced off.
Every wait is bounded and waits on a fact (crm_mon, the API, the database).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha.bootstrap import nodeconf
from ha.lab import faults, lifecycle, node, stack, state
from ha.lab.commands import wait_until
from tests.lab.conftest import lab_unavailable
from tests.lab.labtools import StackLab, lab_session

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(lab_unavailable() is not None,
                                 reason=f"no lab here: {lab_unavailable()}")]

LAB_DIR = state.default_lab_dir()
NODES = ["node1", "node2", "node3"]
REPO = Path(__file__).resolve().parents[2]
TINY = REPO / ".haven-bench" / "tiny" / "tiny.qcow2"
TIMINGS: dict[str, str] = {}


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[StackLab]:
    if not TINY.is_file():
        subprocess.run([sys.executable, str(REPO / "images/tiny/build.py"),
                        "--out", str(TINY.parent)], check=True, timeout=600)
    with lab_session(request, LAB_DIR, "stack lab", TIMINGS):
        report = lifecycle.up(LAB_DIR, len(NODES), with_libvirt=True)
        TIMINGS["haven lab up --libvirt"] = f"{report.seconds_total:.1f} s"
        seconds = stack.up_stack(LAB_DIR)
        TIMINGS["haven lab stack (Galera, RabbitMQ, Haven, VIP)"] = f"{seconds:.1f} s"
        yield StackLab(LAB_DIR)


def test_the_stack_runs_everywhere_and_openstack_works_through_the_vip(lab: StackLab) -> None:
    view = lab.wait_stack(NODES, 120)
    assert lab.stack_started(view, NODES)
    script = stack.paths(LAB_DIR).script.read_text()
    assert "ocf:heartbeat:galera" in script and "ocf:haven:haven-identity" in script

    assert len(lab.openstack("token", "issue", "-f", "value", "-c", "id").strip()) > 20
    services = json.loads(lab.openstack("compute", "service", "list", "-f", "json"))
    assert sorted(s["Host"] for s in services) == NODES
    assert all(s["State"] == "up" for s in services)
    lab.openstack("image", "create", "--disk-format", "qcow2", "--container-format", "bare",
                  "--public", "--file", str(TINY), "tiny")
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


def test_power_loss_of_the_vip_node_under_load_loses_no_acknowledged_write(
        lab: StackLab, tmp_path: Path) -> None:
    lab.wait_stack(NODES, 180)
    view = lab.view()
    assert view is not None
    victim = view.running_on("vip")[0]
    survivor = next(n for n in NODES if n != victim)
    fences_before = len(lab.fences(victim))
    log = tmp_path / "churn.jsonl"
    password = stack.paths(LAB_DIR).admin_password.read_text().strip()
    auth_url = stack.auth_url(lab.state())
    churn = subprocess.Popen(
        stack.client_argv(lab.state(), [sys.executable, "-m", "tests.lab.vip_client", "churn",
                                        auth_url, password, str(log), "45"]),
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO),
                       "REQUESTS_CA_BUNDLE": str(stack.paths(LAB_DIR).ca / "ca.crt")})
    try:
        wait_until(lambda: log.exists() and len(log.read_text().splitlines()) > 50, 60,
                   "the client to get going")
        t_kill = time.time()
        faults.kill(LAB_DIR, victim)
        churn.wait(timeout=120)
    finally:
        churn.kill()
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    after = [r for r in rows if r["t"] > t_kill]
    ok_after = [r for r in after if r["status"] in (201, 204)]
    assert ok_after, "the API never answered again through the VIP"
    TIMINGS["VIP node power loss: first 2xx after the kill"] = \
        f"{ok_after[0]['t'] - t_kill:.1f} s"
    assert lab.wait_new_fence(victim, fences_before, timeout=60)
    # Every acknowledged create is in the database unless acknowledged deleted later;
    # every acknowledged delete is gone.
    created = {r["id"] for r in rows if r["op"] == "create" and r["status"] == 201}
    # 404: an earlier delete whose answer was lost had already removed it
    deleted = {r["id"] for r in rows if r["op"] == "delete" and r["status"] in (204, 404)}
    stored = set(lab.sql(survivor, "SELECT id FROM networks WHERE name LIKE 'churn-%'"))
    assert created - deleted <= stored, f"lost creates: {sorted(created - deleted - stored)}"
    assert not (deleted & stored), f"deleted but still stored: {sorted(deleted & stored)}"
    TIMINGS["churn: acknowledged creates / deletes"] = f"{len(created)} / {len(deleted)}"
    lab.wait_stack([n for n in NODES if n != victim], 60)

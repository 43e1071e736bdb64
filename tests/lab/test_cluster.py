"""A real 3-node Corosync/Pacemaker cluster in namespaces, fenced for real.

One cluster serves the module (it takes ~12 s to build); a test that breaks a node
first restores the cluster (powers fenced nodes back on through the power switch,
as an operator would) instead of rebuilding it. Every wait is on a fact the
cluster reports (crm_mon, stonith_admin, the power switch), with a bound. The
fixture always calls ``down`` in a finally. Timings are printed at the end.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha import crm
from ha.cli import main
from ha.lab import faults, lifecycle, node, power, proc, state
from ha.lab.commands import wait_until
from tests.lab.conftest import lab_unavailable
from tests.lab.labtools import Lab, lab_session

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(lab_unavailable() is not None,
                                 reason=f"no lab here: {lab_unavailable()}")]

LAB_DIR = state.default_lab_dir()
NODES = ["node1", "node2", "node3"]
TIMINGS: dict[str, str] = {}


class DummyLab(Lab):
    """The lab with one Dummy resource the failover tests move around."""

    def __init__(self, lab_dir: Path) -> None:
        super().__init__(lab_dir)
        self.dummy = False  # created by the first test (or by restore, run alone)

    def restore(self, timeout: float = 90.0) -> crm.ClusterView:
        """Every node on and online, every resource running."""
        self.power_on_all(timeout)
        if not self.dummy:
            self.create_dummy()
        want = [f"fence-{n}" for n in NODES] + ["dummy"]
        return self.wait_view(lambda v: all(v.running_on(r) for r in want), timeout,
                              "every resource running")

    def create_dummy(self) -> None:
        assert main(["lab", "exec", "node1", "--", "pcs", "resource", "create", "dummy",
                     "ocf:pacemaker:Dummy", "op", "monitor", "interval=5s"]) == 0
        self.dummy = True


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with lab_session(request, LAB_DIR, "lab timing", TIMINGS):
        report = lifecycle.up(LAB_DIR, len(NODES))
        TIMINGS["cluster formation (power-on to 3 online, DC, quorum)"] = \
            f"{report.seconds_to_form:.1f} s"
        TIMINGS["haven lab up, in all (with fencing configured)"] = f"{report.seconds_total:.1f} s"
        yield DummyLab(LAB_DIR)


def test_three_nodes_form_and_a_dummy_runs(lab: DummyLab, capsys: pytest.CaptureFixture[str],
                                           ) -> None:
    view = lab.wait_view(lambda v: v.online == NODES, 30, "3 nodes online")
    assert view.quorum and view.dc in NODES
    assert all(view.running_on(f"fence-{n}") for n in NODES)
    lab.create_dummy()
    view = lab.wait_view(lambda v: v.running_on("dummy"), 30, "the Dummy to start")
    assert len(view.running_on("dummy")) == 1
    status = lifecycle.status(LAB_DIR, with_cluster=False)
    memory = [n.memory_mib for n in status.nodes]
    TIMINGS["memory per node (PSS: init + corosync + pacemaker)"] = \
        f"{sum(memory) / len(memory):.0f} MiB ({', '.join(f'{m:.0f}' for m in memory)})"
    # Operator mistakes: one line, exit 2.
    capsys.readouterr()
    assert main(["lab", "freeze", "node9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no node 'node9'" in err


def test_power_loss_fails_over_and_the_dead_node_is_fenced_off(lab: DummyLab) -> None:
    view = lab.restore()
    victim = view.running_on("dummy")[0]
    before = len(lab.fences(victim))
    started = time.monotonic()
    assert faults.kill(LAB_DIR, victim)
    view = lab.wait_view(lambda v: v.running_on("dummy") not in ((), (victim,)), 60,
                         "the Dummy to run on a survivor", excluding=(victim,))
    TIMINGS["Dummy failover after power loss"] = f"{time.monotonic() - started:.1f} s"
    events = lab.wait_new_fence(victim, before)
    assert events[0].delegate in NODES and events[0].delegate != victim
    # ...by the lab's agent: a survivor's fencer asked the power switch.
    assert any(r.requester in NODES and r.requester != victim for r in lab.off_requests(victim))


def test_a_frozen_node_is_fenced_not_waited_on(lab: DummyLab) -> None:
    view = lab.restore()
    victim = view.running_on("dummy")[0]
    before = len(lab.fences(victim))
    started = time.monotonic()
    assert faults.freeze(LAB_DIR, victim) > 0
    wait_until(lambda: lab.power_status(victim) == "off", 60, f"frozen {victim} to be fenced")
    elapsed = time.monotonic() - started
    TIMINGS["fence after freeze (SIGSTOP to powered off)"] = f"{elapsed:.1f} s"
    assert elapsed < 60
    lab.wait_new_fence(victim, before)
    lab.wait_view(lambda v: v.running_on("dummy") not in ((), (victim,)), 60,
                  "the Dummy to run on a survivor", excluding=(victim,))


def test_a_node_cut_off_the_network_is_fenced(lab: DummyLab) -> None:
    lab.restore()
    victim = "node3"
    before = len(lab.fences(victim))
    started = time.monotonic()
    assert main(["lab", "cut", victim]) == 0
    wait_until(lambda: lab.power_status(victim) == "off", 60, f"cut-off {victim} to be fenced")
    TIMINGS["fence after link cut"] = f"{time.monotonic() - started:.1f} s"
    assert any(r.requester in NODES and r.requester != victim for r in lab.off_requests(victim))
    # Powering the node on before the fence is reported would race the agent, which
    # confirms "off" with status polls (and would see the outlet on again).
    lab.wait_new_fence(victim, before)


def test_fence_reboot_through_the_agent_brings_the_node_back(lab: DummyLab) -> None:
    lab.restore()
    victim, asker = "node2", lab.state().nodes["node1"]
    started = time.monotonic()
    node.exec_in(asker, ["stonith_admin", "--reboot", victim, "--timeout", "90"], timeout=120)
    # a liveness bound, not a speed goal: a loaded 2-core machine has taken over 90 s
    lab.wait_view(lambda v: v.online == NODES, 180, f"{victim} to rejoin after reboot")
    TIMINGS["fence reboot to rejoined"] = f"{time.monotonic() - started:.1f} s"
    requests = [r for r in power.parse_power_log((LAB_DIR / state.POWER_LOG).read_text())
                if r.node == victim]
    assert [r.action for r in requests][-2:] == ["off", "on"]
    assert all(r.requester in NODES and r.requester != victim for r in requests[-2:])


# ---- down -------------------------------------------------------------------------
def snapshot(lab_dir: Path) -> tuple[dict[int, int | None], set[int]]:
    """PIDs (with start times) of everything the lab runs, and its PID namespaces."""
    st = state.load(lab_dir)
    pids: dict[int, int | None] = {}
    namespaces: set[int] = set()
    for nd in (st.nodes.values() if st else []):
        for pid in node.pids(nd):
            pids[pid] = proc.start_time(pid)
        if nd.init_pid and node.running(nd):
            inode = proc.ns_inode(nd.init_pid, "pid")
            if inode:
                namespaces.add(inode)
    for pid in lifecycle.lab_processes(lab_dir):
        pids[pid] = proc.start_time(pid)
    return pids, namespaces


def live(pattern: list[str]) -> list[int]:
    """pgrep, without the zombies this machine's PID 1 has not reaped yet."""
    found = subprocess.run(["pgrep", *pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found if proc.alive(int(p), None)]


def assert_nothing_left(pids: dict[int, int | None], namespaces: set[int],
                        run_netns_existed: bool) -> None:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "hvl-" not in netns
    mountinfo = Path("/proc/self/mountinfo").read_text()
    assert str(LAB_DIR) not in mountinfo and "/run/netns/hvl-" not in mountinfo
    if not run_netns_existed:
        assert not Path("/run/netns").exists() and " /run/netns " not in mountinfo
    assert [p for p, start in pids.items() if proc.alive(p, start)] == []
    assert live(["-f", str(node.INIT_SCRIPT)]) == []
    assert live(["-f", power.MODULE]) == []
    for name in ("corosync", "pacemakerd", "pacemaker-controld", "libvirtd"):
        leftover = [p for p in live(["-x", name]) if proc.ns_inode(p, "pid") in namespaces]
        assert leftover == [], name
    assert not LAB_DIR.exists()
    assert not Path("/var/lib/haven").exists() or any(Path("/var/lib/haven").iterdir())


def test_down_leaves_no_namespace_mount_or_process(lab: DummyLab) -> None:
    pids, namespaces = snapshot(LAB_DIR)
    assert namespaces and len(pids) > len(namespaces)
    run_netns_existed = not lab.state().created_run_netns
    assert main(["lab", "down"]) == 0
    assert_nothing_left(pids, namespaces, run_netns_existed)
    assert main(["lab", "down"]) == 0  # idempotent


def test_down_cleans_up_after_a_partial_up() -> None:
    busy = lifecycle.busy_reason(LAB_DIR)
    if busy:
        pytest.fail(f"{busy}: run `haven lab down` first (one lab at a time)")
    run_netns_existed = Path("/run/netns").exists()
    up = subprocess.Popen([sys.executable, "-m", "ha.cli", "lab", "up", "--nodes", "2"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def a_node_is_on() -> bool:
            st = state.load(LAB_DIR)
            return bool(st and any(node.running(n) for n in st.nodes.values()))
        wait_until(a_node_is_on, 60, "the first node to power on")
        up.kill()  # no chance to clean up: as if the machine lost the CLI mid-way
        up.wait(10)
        pids, namespaces = snapshot(LAB_DIR)
        assert namespaces
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        assert main(["lab", "down"]) == 0
    assert_nothing_left(pids, namespaces, run_netns_existed)

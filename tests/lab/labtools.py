"""What lab tests share: the running lab as a test sees it, and log keeping."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ha import crm
from ha.bootstrap.cib import API_SERVICES
from ha.lab import cluster, network, node, power, stack, state
from ha.lab.commands import CLEAN_ENV, wait_until
from ha.lab.state import LabState, NodeState

REPO = Path(__file__).resolve().parents[2]
TINY_DIR = REPO / ".haven-bench" / "tiny"


def tiny_image(out: Path = TINY_DIR) -> Path:
    """The tiny guest's disk, built here by images/tiny/build.py (``--out DIR``). Run
    every time, not only when the file is missing: the script rebuilds an image whose
    inputs changed and returns at once when it is up to date, so a lab never boots a
    stale or half-written image left by an earlier run."""
    subprocess.run([sys.executable, str(REPO / "images" / "tiny" / "build.py"), "--out",
                    str(out)], check=True, timeout=900)
    image = out / "tiny.qcow2"
    assert image.is_file(), f"images/tiny/build.py --out {out} made no {image.name}"
    return image


class Lab:
    """The running lab as the tests see it: its state, a live observer, waits."""

    def __init__(self, lab_dir: Path) -> None:
        self.lab_dir = lab_dir

    def state(self) -> LabState:
        st = state.load(self.lab_dir)
        assert st is not None, "the lab vanished"
        return st

    def observer(self, excluding: tuple[str, ...] = ()) -> NodeState | None:
        """A node that can answer: on, not frozen, its link up."""
        st = self.state()
        for nd in st.nodes.values():
            if (nd.name not in excluding and node.running(nd) and not node.frozen(nd)
                    and network.link_is_up(st.switch_ns, nd.veth)):
                return nd
        return None

    def view(self, excluding: tuple[str, ...] = ()) -> crm.ClusterView | None:
        nd = self.observer(excluding)
        return cluster.view(nd, timeout=10) if nd else None

    def wait_view(self, ok: Callable[[crm.ClusterView], object], timeout: float, what: str,
                  excluding: tuple[str, ...] = ()) -> crm.ClusterView:
        def check() -> crm.ClusterView | None:
            current = self.view(excluding)
            return current if current is not None and ok(current) else None
        return wait_until(check, timeout, what, interval=0.25)

    def power_status(self, name: str) -> str:
        return power.power_status(self.lab_dir, name)

    def fences(self, victim: str) -> list[crm.FenceEvent]:
        """Successful "off" fences of ``victim`` in a survivor's fence history."""
        observer = self.observer(excluding=(victim,))
        if observer is None:
            return []
        return [e for e in cluster.fence_history(observer)
                if e.target == victim and e.action == "off" and e.succeeded]

    def wait_new_fence(self, victim: str, before: int, timeout: float = 30.0,
                       ) -> list[crm.FenceEvent]:
        """Wait until the history holds more fences of ``victim`` than ``before``:
        powered off is not yet fenced (the agent confirms, the fencer reports)."""
        return wait_until(lambda: self.fences(victim)[before:], timeout,
                          f"a new fence of {victim} in the history")

    def off_requests(self, victim: str) -> list[power.PowerRequest]:
        text = (self.lab_dir / state.POWER_LOG).read_text()
        return [r for r in power.parse_power_log(text) if r.action == "off" and r.node == victim]

    def power_on_all(self, online_timeout: float = 90.0) -> crm.ClusterView:
        """Every node powered on (through the power switch) and online."""
        names = sorted(self.state().nodes)
        for nd in self.state().nodes.values():
            if not node.running(nd):
                reply = power.request(self.state().socket_path, "on", nd.name)
                assert reply["ok"], reply
        return self.wait_view(lambda v: v.online == names, online_timeout, "all nodes online")


SERVICES = [f"haven-{s}" for s in API_SERVICES] + ["haven-compute"]


class StackLab(Lab):
    def client(self, *argv: str, timeout: float = 120.0, check: bool = True,
               ) -> subprocess.CompletedProcess[str]:
        """A command run as a lab client (switch namespace, the lab's clouds.yaml)."""
        env = {**CLEAN_ENV, **stack.client_env(self.lab_dir)}
        result = subprocess.run(stack.client_argv(self.state(), argv), env=env, text=True,
                                capture_output=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"{argv}: {result.stderr[-800:]}"
        return result

    def openstack(self, *argv: str, timeout: float = 120.0) -> str:
        return self.client("openstack", *argv, timeout=timeout).stdout

    def stack_started(self, view: crm.ClusterView, nodes: list[str]) -> bool:
        want = set(nodes)
        return (set(view.promoted_on("galera")) == want
                and set(view.running_on("rabbitmq")) == want
                and all(set(view.running_on(s)) == want for s in SERVICES)
                and len(view.running_on("vip")) == 1)

    def wait_stack(self, nodes: list[str], timeout: float) -> crm.ClusterView:
        return self.wait_view(lambda v: self.stack_started(v, nodes), timeout,
                              f"the stack started on {', '.join(nodes)}")

    def haven(self, on: str, *argv: str) -> str:
        """A ``haven`` command inside a node, with that node's config."""
        nd = self.state().nodes[on]
        return node.exec_in(nd, [str(stack.HAVEN_BINARY), *argv, "--config",
                                 "/etc/haven/haven.yaml"], timeout=60).stdout

    def sql(self, on: str, query: str) -> list[str]:
        nd = self.state().nodes[on]
        result = node.exec_in(nd, ["mysql", "-N", "-B", "haven", "-e", query], timeout=30)
        return result.stdout.split()


def keep_logs(lab_dir: Path) -> Path:
    """Copy the lab's logs (power switch, every node's /var/log and daemon output)
    out of the lab directory before ``down`` removes it: a failed run's evidence."""
    dest = Path(tempfile.mkdtemp(prefix="haven-lab-logs-"))
    for path in lab_dir.glob("*.log"):
        shutil.copy2(path, dest)
    for node_dir in (lab_dir / "nodes").glob("*"):
        target = dest / node_dir.name
        target.mkdir()
        for out in node_dir.glob("*.out"):
            shutil.copy2(out, target)
        if (node_dir / "root/var/log").is_dir():
            shutil.copytree(node_dir / "root/var/log", target / "log", symlinks=True)
    return dest


@contextlib.contextmanager
def lab_session(request: pytest.FixtureRequest, lab_dir: Path, title: str,
                timings: dict[str, str]) -> Iterator[None]:
    """The life of a module's lab: refuse to start beside another lab; afterwards keep
    the logs if a test failed, take the lab down, and report ``timings`` (on the
    terminal and in /tmp/haven-lab-timings-TITLE.json, for the notes)."""
    from ha.lab import lifecycle

    busy = lifecycle.busy_reason(lab_dir)
    if busy:
        pytest.fail(f"{busy}: run `haven lab down` first (one lab at a time)")
    failed_before = request.session.testsfailed
    try:
        yield
    finally:
        lines = [f"{title}: {key}: {value}" for key, value in timings.items()]
        if request.session.testsfailed > failed_before:
            lines.append(f"lab logs kept in {keep_logs(lab_dir)}")
        lifecycle.down(lab_dir)
        Path(f"/tmp/haven-lab-timings-{title.replace(' ', '-')}.json").write_text(
            json.dumps(timings, indent=2) + "\n")
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            for line in ["", *lines]:
                reporter.write_line(line)

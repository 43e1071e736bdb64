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
from ha.lab import cluster, faults, network, node, power, stack, state
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

    def whole_again(self) -> None:
        """Every node on and running the stack, every hypervisor enabled and up (a node
        an earlier test left frozen or cut is thawed and plugged back in)."""
        st = self.state()
        for nd in st.nodes.values():
            if node.frozen(nd):
                faults.thaw(self.lab_dir, nd.name)
            if node.running(nd) and not network.link_is_up(st.switch_ns, nd.veth):
                faults.heal(self.lab_dir, nd.name)
        names = sorted(st.nodes)
        self.power_on_all(180)
        self.wait_stack(names, 400)
        # A fresh start, as a new lab's: the failures earlier faults left on record
        # (monitors that failed meanwhile, operations lost with a node) are cleared, or
        # a test that reads the record would count them, and Pacemaker might still act on
        # one (a late recovery restarting a service under the next test).
        observer = self.observer()
        assert observer is not None, "no node can answer"
        node.exec_in(observer, ["crm_resource", "--cleanup"], timeout=120)
        self.wait_view(lambda v: self.stack_started(v, names) and not v.failures, 300,
                       "the stack started with no failure on record")

        def ready() -> bool:
            services = json.loads(self.openstack("compute", "service", "list", "-f", "json"))
            return len(services) == len(names) and all(
                s["Status"] == "enabled" and s["State"] == "up" for s in services)
        wait_until(ready, 240, "every hypervisor enabled and up", interval=2)

    def tiny_image_id(self) -> str:
        """The public image ``tiny`` (images/tiny), uploaded once per lab."""
        found = self.client("openstack", "image", "show", "tiny", "-f", "value", "-c", "id",
                            check=False)
        if found.returncode == 0:
            return found.stdout.strip()
        return self.openstack("image", "create", "--disk-format", "qcow2",
                              "--container-format", "bare", "--public", "--file",
                              str(tiny_image()), "tiny", "-f", "value", "-c", "id").strip()

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


def report_timings(request: pytest.FixtureRequest, title: str, timings: dict[str, str],
                   extra: list[str]) -> None:
    """``timings`` on the terminal and in /tmp/haven-lab-timings-TITLE.json (notes)."""
    Path(f"/tmp/haven-lab-timings-{title.replace(' ', '-')}.json").write_text(
        json.dumps(timings, indent=2) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in ["", *(f"{title}: {key}: {value}" for key, value in timings.items()),
                     *extra]:
            reporter.write_line(line)


@contextlib.contextmanager
def lab_session(request: pytest.FixtureRequest, lab_dir: Path, title: str,
                timings: dict[str, str]) -> Iterator[None]:
    """The life of a module's lab: refuse to start beside another lab; afterwards keep
    the logs if a test failed, take the lab down, and report ``timings``."""
    from ha.lab import lifecycle

    SHARED_STACK.release()
    busy = lifecycle.busy_reason(lab_dir)
    if busy:
        pytest.fail(f"{busy}: run `haven lab down` first (one lab at a time)")
    failed_before = request.session.testsfailed
    try:
        yield
    finally:
        extra = []
        if request.session.testsfailed > failed_before:
            extra.append(f"lab logs kept in {keep_logs(lab_dir)}")
        lifecycle.down(lab_dir)
        report_timings(request, title, timings, extra)


class SharedStack:
    """One lab running the whole stack (libvirt, networking), shared by the modules
    that test on it (evacuation, stack): building one costs two minutes of the suite's
    45. A module that needs another lab releases it first (``lab_session``); the last
    user's session ends it (tests/lab/conftest.py)."""

    def __init__(self, lab_dir: Path) -> None:
        self.lab_dir = lab_dir
        self.built = False

    def get(self, timings: dict[str, str]) -> None:
        """The shared lab up; built here (its times into ``timings``) if it is not."""
        from ha.lab import lifecycle

        if self.built:
            return
        busy = lifecycle.busy_reason(self.lab_dir)
        if busy:
            pytest.fail(f"{busy}: run `haven lab down` first (one lab at a time)")
        tiny_image()  # before the lab: the build is heavy, the lab's timers are not patient
        try:
            report = lifecycle.up(self.lab_dir, 3, with_libvirt=True)
            timings["haven lab up --libvirt"] = f"{report.seconds_total:.1f} s"
            seconds = stack.up_stack(self.lab_dir, networking=True)
            timings["haven lab stack (Galera, RabbitMQ, Haven, VIP, networking)"] = \
                f"{seconds:.1f} s"
        except BaseException:
            keep = keep_logs(self.lab_dir) if state.load(self.lab_dir) else None
            lifecycle.down(self.lab_dir)
            if keep:
                print(f"the shared lab did not come up; its logs are in {keep}")
            raise
        self.built = True

    def release(self) -> None:
        from ha.lab import lifecycle

        if self.built:
            lifecycle.down(self.lab_dir)
            self.built = False


SHARED_STACK = SharedStack(state.default_lab_dir())


@contextlib.contextmanager
def stack_session(request: pytest.FixtureRequest, title: str, timings: dict[str, str]
                  ) -> Iterator[StackLab]:
    """A module's time on the shared stack lab: the lab whole again at its start (an
    earlier module may have left a node off, frozen or cut), its logs kept if one of
    its tests failed, its ``timings`` reported at its end."""
    SHARED_STACK.get(timings)
    lab = StackLab(SHARED_STACK.lab_dir)
    failed_before = request.session.testsfailed
    try:
        lab.whole_again()
        yield lab
    finally:
        extra = []
        if request.session.testsfailed > failed_before:
            extra.append(f"lab logs kept in {keep_logs(SHARED_STACK.lab_dir)}")
        report_timings(request, title, timings, extra)

"""Evacuation in the lab: real Pacemaker, real fencing, real QEMU guests whose disks
live in the shared instances directory, the evacuation controller under Pacemaker.

The module runs on the stack lab it shares with tests/lab/test_stack.py (``haven lab
up --libvirt`` + ``haven lab stack --networking``: its guests' ports are plugged and
filtered by each node's network agent, and an evacuated guest resumes only once its
port is up on the new node). Its
nodes keep their clocks in Asia/Kolkata (``ha.lab.config.NODE_TIMEZONE``), so
Pacemaker prints fence times with their offset ("... +05:30"), as on a real node
outside UTC: a lost hypervisor must be evacuated after its new fence, read at its
real time, and never on the strength of an old one.

The guests write a random token to their own disk at first boot and print it
again, read back from the disk, at every later boot: a guest that comes back with
its own token came back with its own disk, intact.

No guest may ever run twice. A QEMU observer (``tests/lab/qemu_observer.py``)
samples the host's /proc every 0.1 s for the whole module -- all nodes share this
kernel, so it sees every node's QEMUs, frozen or cut ones included -- and any
sample with two QEMU processes of one instance fails the test it falls in. The
hard cases (a hypervisor frozen, cut from the network, one whose fence fails, the
controller's own node lost mid-evacuation) check the stonith history, the
controller's records, the database's migrations and the observer's record of
every QEMU process: fenced once after the last sign of life, every rebuild after
the fence, each guest's old QEMU gone by the fence and one new QEMU after it.

Durability: the nodes share this machine's page cache, so a guest disk write the
power cut "loses" is never lost here; the disk-token check proves the disk is the
guest's own, not that an unflushed write survives a real power loss.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ha import crm
from ha.lab import cluster, faults, node, state
from ha.lab.commands import LabError, wait_until
from tests.lab.conftest import lab_unavailable
from tests.lab.labtools import StackLab, stack_session
from tests.lab.qemu_observer import Qemu, QemuObserver, lab_node_namer

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(lab_unavailable() is not None,
                                 reason=f"no lab here: {lab_unavailable()}")]

LAB_DIR = state.default_lab_dir()
NODES = ["node1", "node2", "node3"]
TOKEN = re.compile(r"HAVEN-TOKEN ([0-9a-f]+) (new|from-disk)")
GUESTS = 3
TIMINGS: dict[str, str] = {}
FENCED: list[str] = []  # hypervisors fenced by an earlier test of this module
OFFSET = "+05:30"  # config.NODE_TIMEZONE's offset (Asia/Kolkata keeps no summer time)


class EvacLab(StackLab):
    def __init__(self, lab_dir: Path, qemus: QemuObserver) -> None:
        super().__init__(lab_dir)
        self.qemus = qemus  # every QEMU of every node, from the host's /proc

    def servers(self) -> list[dict[str, str]]:
        servers: list[dict[str, str]] = json.loads(
            self.openstack("server", "list", "--long", "-f", "json"))
        return servers

    def tokens(self, server: str) -> list[tuple[str, str]]:
        return TOKEN.findall(self.openstack("console", "log", "show", server))

    def running_on(self, host: str) -> dict[str, list[Qemu]]:
        """Instance -> its QEMU processes on ``host`` in a sample taken from now on."""
        self.qemus.wait_sample(time.time())
        return self.qemus.snapshot().running(host)


def lab_qemu_observer() -> QemuObserver:
    """The module's observer: nodes named by their init's PID namespace, as the lab
    state has them when a QEMU first appears."""
    def inits() -> list[tuple[str, int | None]]:
        st = state.load(LAB_DIR)
        return [(nd.name, nd.init_pid) for nd in st.nodes.values()] if st else []
    return QemuObserver(lab_node_namer(inits), interval=0.1)


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[EvacLab]:
    with stack_session(request, "evacuation lab", TIMINGS) as shared, \
            lab_qemu_observer() as qemus:
        evac = EvacLab(shared.lab_dir, qemus)
        evac.wait_view(lambda v: bool(v.running_on("haven-evacuator")), 120,
                       "the evacuation controller")
        evac.tiny_image_id()
        yield evac
        record = qemus.snapshot()
        TIMINGS["QEMU observer: samples, longest gap, QEMU processes seen"] = (
            f"{record.samples}, {record.longest_gap:.2f} s, {len(record.lives)}")
        record.assert_no_double()


@pytest.fixture(autouse=True)
def no_double_run(lab: EvacLab) -> Iterator[None]:
    """Every test of the module: no instance ran twice in any sample taken during it."""
    before = len(lab.qemus.snapshot().doubles)
    yield
    lab.qemus.wait_sample(time.time())
    record = lab.qemus.snapshot()
    assert record.doubles[before:] == [], (
        f"an instance ran twice during the test; first: {record.doubles[before]}")


def test_the_observer_catches_a_second_qemu_of_one_instance_on_another_node(
        lab: EvacLab) -> None:
    """The observer's own proof, in the lab: one instance id given to two QEMU processes
    started inside two nodes (QEMU with no machine: it runs no guest, but has a guest's
    command line), one of them SIGSTOPped as on a frozen node. The module's observer
    must report that double run, each process on its node, the stopped one as such.
    (The instance is planted: its double is judged here, not as a failure.)"""
    instance = str(uuid.uuid4())
    lab.qemus.plant(instance)
    argv = ["qemu-system-x86_64", "-machine", "none", "-S", "-nodefaults", "-display", "none",
            "-name", f"guest=haven-{instance}", "-uuid", instance]
    st = lab.state()
    for name in ("node1", "node2"):
        node.spawn_in(LAB_DIR, st.nodes[name], argv, "planted-qemu.out")
    try:
        def both() -> list[Qemu] | None:
            found = lab.qemus.snapshot().running().get(instance, [])
            return found if len(found) == 2 else None
        planted = wait_until(both, 60, "the two planted QEMUs seen")
        stopped = next(q for q in planted if q.node == "node2")
        os.kill(stopped.pid, signal.SIGSTOP)

        def caught() -> list[Qemu] | None:
            doubles = [d for d in lab.qemus.snapshot().planted_doubles
                       if d.instance == instance and any(q.stopped for q in d.qemus)]
            return list(doubles[-1].qemus) if doubles else None
        qemus = wait_until(caught, 30, "the observer reporting the planted double")
        assert sorted((q.node, q.stopped) for q in qemus) == [("node1", False), ("node2", True)]
    finally:
        for q in lab.qemus.snapshot().running().get(instance, []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(q.pid, signal.SIGKILL)
                os.kill(q.pid, signal.SIGCONT)
    wait_until(lambda: instance not in lab.running_on("node1")
               and instance not in lab.running_on("node2"), 30, "the planted QEMUs gone")


def boot_on(lab: EvacLab, host: str, names: list[str]) -> None:
    """Boot ``names`` on ``host``: the other hypervisors are disabled meanwhile."""
    others = [n for n in NODES if n != host]
    for other in others:
        lab.openstack("compute", "service", "set", "--disable", other, "nova-compute")
    try:
        for name in names:
            lab.openstack("server", "create", "--image", "tiny", "--flavor", "m1.tiny",
                          "--network", "provider", name)
        wait_until(lambda: all(s["Status"] == "ACTIVE" for s in lab.servers()
                               if s["Name"] in names), 180, "the guests ACTIVE", interval=2)
    finally:
        for other in others:
            lab.openstack("compute", "service", "set", "--enable", other, "nova-compute")


def kills(lab: EvacLab, victim: str) -> list[crm.FenceEvent]:
    """Successful off/reboot fences of ``victim`` in a survivor's history (all of it)."""
    observer = lab.observer(excluding=(victim,))
    assert observer is not None
    return [e for e in cluster.fence_history(observer) if e.target == victim
            and e.action in ("off", "reboot") and e.succeeded]


def completed_at(text: str) -> float:
    """Pacemaker 2.1.5's ``completed`` on a node in Asia/Kolkata, read here on its own
    (not with the controller's parser, which is under test): local time, its offset."""
    assert text.endswith(" " + OFFSET), f"not the node's local time with its offset: {text!r}"
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S %z").timestamp()


def newest_event(lab: EvacLab, on: str, host: str) -> dict[str, Any] | None:
    events = [e for e in json.loads(lab.haven(on, "evacuation", "list", "--json"))
              if e["host"] == host]
    return max(events, key=lambda e: int(e["id"])) if events else None


def wait_for_token(lab: EvacLab, name: str, how: str) -> str:
    """The newest token ``name`` printed ``how`` ("new" at first boot, "from-disk" after)."""
    def found() -> list[str]:
        return [t for t, kind in lab.tokens(name) if kind == how]
    try:
        return wait_until(found, 120, f"{name}'s {how} token on its console", interval=2)[-1]
    except LabError:
        tail = lab.openstack("console", "log", "show", "--lines", "15", name)
        raise LabError(f"no {how} token from {name}; tokens seen {lab.tokens(name)}; "
                       f"console ends:\n{tail}") from None


def test_a_second_qemu_cannot_open_a_running_guests_disk(lab: EvacLab) -> None:
    """Around the controller: define a copy of a running guest on another node and
    start it. The disk lease (virtlockd, lock_manager = "lockd") refuses it."""
    boot_on(lab, "node1", ["lease-probe"])
    server = next(s for s in lab.servers() if s["Name"] == "lease-probe")
    owner = lab.state().nodes["node1"]
    xml = node.exec_in(owner, ["virsh", "dumpxml", f"haven-{server['ID']}"]).stdout
    copy = re.sub(r"<uuid>[^<]+</uuid>", "", xml)
    copy = re.sub(r"<name>[^<]+</name>", "<name>intruder</name>", copy)
    other = lab.state().nodes["node2"]
    # The intruder's QEMU does start (and names the guest's disk) before its image lock
    # refuses it: a second start on purpose, judged here rather than by the observer.
    lab.qemus.plant(server["ID"])
    node.exec_in(other, ["sh", "-c", "cat > /tmp/intruder.xml"], input_text=copy)
    node.exec_in(other, ["virsh", "define", "/tmp/intruder.xml"])
    try:
        result = node.exec_in(other, ["virsh", "start", "intruder"], check=False, timeout=60)
        assert result.returncode != 0, "a second QEMU started on a disk a live guest holds"
        assert "lock" in result.stderr.lower(), result.stderr
        # In the processes: the guest's own QEMU runs on; the intruder's is gone.
        lab.qemus.wait_sample(time.time())
        now = lab.qemus.snapshot().running()
        assert [q.node for q in now.get(server["ID"], [])] == ["node1"], now
        TIMINGS["second start refused with"] = result.stderr.strip().splitlines()[-1][:160]
    finally:
        node.exec_in(other, ["virsh", "destroy", "intruder"], check=False)
        node.exec_in(other, ["virsh", "undefine", "intruder"], check=False)
    lab.openstack("server", "delete", "--wait", "lease-probe", timeout=120)


def test_power_loss_of_a_hypervisor_evacuates_every_guest_with_its_disk(lab: EvacLab) -> None:
    view = lab.view()
    assert view is not None
    busy = set(view.running_on("vip")) | set(view.running_on("haven-evacuator"))
    victim = next(n for n in reversed(NODES) if n not in busy)
    names = [f"pet{i}" for i in range(GUESTS)]
    boot_on(lab, victim, names)
    lab.openstack("server", "set", "--property", "ha:enabled=false", names[-1])
    protected = names[:-1]
    before = {name: wait_for_token(lab, name, "new") for name in names}
    ids = {s["Name"]: s["ID"] for s in lab.servers()}
    earlier = {(e.action, e.completed) for e in kills(lab, victim)}
    t_kill = time.monotonic()
    wall_kill = time.time()  # the nodes share this machine's clock
    faults.kill(LAB_DIR, victim)

    def all_back() -> bool:
        servers = {s["Name"]: s for s in lab.servers()}
        return all(servers[n]["Status"] == "ACTIVE" and servers[n]["Host"] not in
                   (victim, "") for n in protected)
    wait_until(all_back, 240, "every protected guest ACTIVE on a survivor", interval=1)
    TIMINGS[f"{len(protected)} guests ACTIVE elsewhere after power loss"] = \
        f"{time.monotonic() - t_kill:.1f} s"
    for name in protected:
        assert wait_for_token(lab, name, "from-disk") == before[name], \
            f"{name} came back with another disk"
    # The opted-out guest stays where it was, reported, not moved.
    servers = {s["Name"]: s for s in lab.servers()}
    assert servers[names[-1]]["Host"] == victim
    # The controller's record of it: phases in order, the opt-out skipped.
    survivor = next(n for n in NODES if n != victim)
    events = json.loads(lab.haven(survivor, "evacuation", "list", "--json"))
    event = next(e for e in events if e["host"] == victim)
    shown = json.loads(lab.haven(survivor, "evacuation", "show", str(event["id"]), "--json"))
    states = {r["instance_id"]: r["state"] for r in shown["instances"]}
    assert all(states[ids[n]] == "done" for n in protected), states
    assert states[ids[names[-1]]] == "skipped"
    phases = shown["phases_s"]
    assert phases["fence confirmed"] <= phases["first rebuild"] <= phases["all active"]
    TIMINGS["phases (s after detection)"] = ", ".join(f"{k} {v}" for k, v in phases.items())
    # Evacuated after its new fence, read at its real time: the fence completed
    # after the power cut and after the node's last sign of life, the controller
    # recorded that very completion time (rounded up to the end of its second), and
    # confirmed, forced down and rebuilt only after it.
    fences = [e for e in kills(lab, victim) if (e.action, e.completed) not in earlier]
    assert len(fences) == 1, fences
    fenced = completed_at(fences[0].completed)
    assert wall_kill < fenced
    # Its second, rounded up. Each node's fencer stamps a fence's completion when it
    # learns the result, so the controller's node may have noted it a second after
    # the observer's (seen: observer ...:52, controller ...:53); never before it.
    assert fenced < shown["fenced_at"] < fenced + 2
    assert shown["alive_at"] < shown["fenced_at"]
    # confirmed and forced down carry the time their iteration began, which may be
    # before the fence's whole second (it is read later in that iteration, and
    # counts if at most Policy.fence_clock_slack ahead); the first rebuild is after.
    assert fenced - 2 < shown["fence_confirmed_at"] <= shown["forced_down_at"]
    assert fenced <= shown["first_rebuild_at"]
    assert shown["forced_down_at"] <= shown["first_rebuild_at"]
    TIMINGS["new fence completed (as printed)"] = fences[0].completed
    TIMINGS["after the fence: confirmed, forced down, first rebuild"] = ", ".join(
        f"+{shown[k] - fenced:.2f} s" for k in ("fence_confirmed_at", "forced_down_at",
                                                "first_rebuild_at"))
    # Pacemaker's alert agent woke the controller (not only its poll).
    controller = view.running_on("haven-evacuator")[0]  # not the victim: it stayed
    log = node.exec_in(lab.state().nodes[controller],
                       ["cat", "/var/log/haven/haven-evacuator.log"], timeout=30).stdout
    assert "woken by a cluster event" in log

    # The host comes back: it starts none of the evacuated guests, cleans up, and is
    # enabled again by the controller once clean.
    lab.power_on_all(120)
    lab.wait_stack(NODES, 400)
    wait_until(lambda: next(s for s in json.loads(lab.openstack(
        "compute", "service", "list", "-f", "json")) if s["Host"] == victim)["Status"]
        == "enabled", 120, f"{victim} re-enabled by the controller", interval=2)
    back = lab.running_on(victim)
    assert not back.keys() & {ids[n] for n in protected}, \
        f"{victim} restarted evacuated guests: {back}"
    FENCED.append(victim)  # fenced once, back in service
    delete_guests(lab, names)


def test_a_hypervisor_that_leaves_without_a_new_fence_is_not_evacuated(lab: EvacLab) -> None:
    """The hypervisor fenced by the previous test, back in service, leaves the cluster
    cleanly (its Pacemaker stopped, as ``pcs cluster stop`` does) while its guest runs
    on. Its fence history holds the old fence, printed in the node's local time: it
    must not count, so nothing is evacuated; the controller waits for a fence and says
    so. When the node rejoins, the event ends and the guest never ran elsewhere."""
    if not FENCED:
        pytest.skip("needs the hypervisor fenced by the power-loss test")
    victim = FENCED[0]
    old = {(e.action, e.completed) for e in kills(lab, victim)}
    assert old and all(completed.endswith(" " + OFFSET) for _, completed in old), old
    boot_on(lab, victim, ["stay"])  # ACTIVE is enough: its domain runs (no boot wait)
    server = next(s for s in lab.servers() if s["Name"] == "stay")
    [guest] = wait_until(lambda: lab.running_on(victim).get(server["ID"]), 60,
                         f"stay's QEMU on {victim}")
    survivor = next(n for n in NODES if n != victim)
    before = newest_event(lab, survivor, victim)
    nd = lab.state().nodes[victim]
    # What `pcs cluster stop` does: Pacemaker shuts down cleanly (resources
    # stopped), then corosync leaves; nobody fences a node that left so.
    for daemon in ("pacemakerd", "corosync"):
        pids = faults.matching(node.pids(nd), daemon)
        assert pids, f"no {daemon} on {victim}"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        wait_until(lambda d=daemon: not faults.matching(node.pids(nd), d), 180,
                   f"{daemon} on {victim} stopped", interval=1)
    lab.wait_view(lambda v: victim not in v.online, 180, f"{victim} out of the cluster",
                  excluding=(victim,))

    def waiting() -> dict[str, Any] | None:
        ev = newest_event(lab, survivor, victim)
        fresh = ev is not None and (before is None or ev["id"] != before["id"])
        return ev if ev is not None and fresh and "unfenced" in ev["alerts"] else None
    event = wait_until(waiting, 240, f"the controller waiting for a fence of {victim}",
                       interval=2)
    assert event["state"] == "detected", event
    assert {(e.action, e.completed) for e in kills(lab, victim)} == old, \
        "the node was fenced after all"
    servers = {s["Name"]: s for s in lab.servers()}
    assert servers["stay"]["Host"] == victim and servers["stay"]["Status"] == "ACTIVE"
    # The very same QEMU process runs it, on the node that left, and no other.
    assert [q.ident for q in lab.qemus.snapshot().running().get(server["ID"], [])] \
        == [guest.ident]
    TIMINGS["left without a fence: event"] = f"{event['state']}, alerts {event['alerts']}"

    cluster.start_stack(LAB_DIR, nd)
    lab.wait_stack(NODES, 400)
    wait_until(lambda: (newest_event(lab, survivor, victim) or {}).get("state")
               == "aborted", 120, "the event aborted: the node rejoined unfenced",
               interval=2)
    servers = {s["Name"]: s for s in lab.servers()}
    assert servers["stay"]["Host"] == victim
    assert [life.node for life in lab.qemus.snapshot().of(server["ID"])] == [victim]
    lab.openstack("server", "delete", "--wait", "stay", timeout=120)


def test_the_nodes_keep_their_clocks_at_the_offset_the_fence_times_are_read_with(
        lab: EvacLab) -> None:
    """OFFSET (what the fence-time checks expect) is the nodes' real offset."""
    for nd in lab.state().nodes.values():
        if node.running(nd):
            assert node.exec_in(nd, ["date", "+%:z"]).stdout.strip() == OFFSET, nd.name


# ---- the hard cases: a host frozen, cut, or whose fence fails ---------------------------
# Each starts from a whole cluster (the previous case's victim powered back on and
# rejoined), boots two guests on a victim that runs neither the VIP nor the controller,
# and ends with the guests deleted (TCG guests are the machine's heaviest load).
def quiet_victim(lab: EvacLab) -> str:
    view = lab.view()
    assert view is not None
    busy = set(view.running_on("vip")) | set(view.running_on("haven-evacuator"))
    return next(n for n in reversed(NODES) if n not in busy)


def guests_on(lab: EvacLab, victim: str, names: list[str]) -> dict[str, Qemu]:
    """Boot ``names`` on ``victim``; instance id -> the one QEMU process running it there."""
    boot_on(lab, victim, names)
    ids = [s["ID"] for s in lab.servers() if s["Name"] in names]
    assert len(ids) == len(names)

    def running() -> dict[str, Qemu] | None:
        here = lab.running_on(victim)
        return {i: here[i][0] for i in ids} if all(len(here.get(i, [])) == 1
                                                   for i in ids) else None
    return wait_until(running, 60, f"one QEMU per guest on {victim}")


def migrations_from(lab: EvacLab, on: str, victim: str, since: float
                    ) -> list[tuple[str, str, float]]:
    """(instance, destination, created at) of every evacuation from ``victim`` since."""
    cells = lab.sql(on, "SELECT instance_id, dest_host, created_at FROM migrations "
                        f"WHERE source_host = '{victim}' AND created_at > {since} "
                        "ORDER BY created_at")
    return [(cells[i], cells[i + 1], float(cells[i + 2])) for i in range(0, len(cells), 3)]


def assert_evacuated_once(lab: EvacLab, victim: str, old: dict[str, Qemu],
                          earlier: set[tuple[str, str]], since: float, label: str,
                          one_fence: bool = True) -> None:
    """The victim's guests run again, once each, on a survivor; it was fenced (once,
    unless ``one_fence`` is false: Pacemaker's own retry may meet an operator's),
    after its last sign of life; every rebuild followed the (first) fence; nothing of
    the old QEMUs ran after the fence's second, and no new QEMU started before it."""
    ids = set(old)

    def all_back() -> dict[str, str] | None:
        servers = {s["ID"]: s for s in lab.servers()}
        broken = {i: servers[i] for i in ids if servers[i]["Status"] == "ERROR"}
        assert not broken, f"guests of {victim} in ERROR: {broken}"
        if all(servers[i]["Status"] == "ACTIVE" and servers[i]["Host"] not in (victim, "")
               for i in ids):
            return {i: servers[i]["Host"] for i in ids}
        return None
    hosts = wait_until(all_back, 240, f"the guests of {victim} ACTIVE on survivors",
                       interval=1)
    TIMINGS[f"{label}: guests ACTIVE elsewhere after the fault"] = \
        f"{time.time() - since:.1f} s"
    survivor = next(h for h in hosts.values())

    # The stonith history: exactly one new successful off of the victim, after the fault.
    fences = sorted((e for e in kills(lab, victim) if (e.action, e.completed) not in earlier),
                    key=lambda e: completed_at(e.completed))
    assert len(fences) == 1 if one_fence else len(fences) >= 1, fences
    fenced = completed_at(fences[0].completed)
    assert since < fenced, (since, fences[0])
    TIMINGS[f"{label}: fence completed (as printed)"] = fences[0].completed

    # The controller's record: fenced after the last sign of life, rebuilt after it.
    def finished() -> dict[str, Any] | None:
        ev = newest_event(lab, survivor, victim)
        return ev if ev is not None and ev["detected_at"] > since and ev["state"] == "done" \
            else None
    event = wait_until(finished, 120, f"the evacuation of {victim} done", interval=2)
    shown = json.loads(lab.haven(survivor, "evacuation", "show", str(event["id"]), "--json"))
    assert fenced < shown["fenced_at"] < fenced + 2, (fenced, shown["fenced_at"])
    assert shown["alive_at"] < shown["fenced_at"]
    assert fenced <= shown["first_rebuild_at"]
    records = {r["instance_id"]: r for r in shown["instances"] if r["instance_id"] in ids}
    assert set(records) == ids
    others = [r for r in shown["instances"] if r["instance_id"] not in ids]
    assert all(r["state"] == "skipped" for r in others), others  # opted out: not moved
    for r in records.values():
        assert (r["state"], r["attempts"], r["target"]) == ("done", 1, hosts[r["instance_id"]]), r
        assert r["started_at"] >= fenced, r

    # The database: one evacuation (migration) per guest, to where it runs, after the fence.
    moved = migrations_from(lab, survivor, victim, since)
    assert sorted((i, dest) for i, dest, _ in moved) == sorted(hosts.items()), moved
    assert all(created >= fenced for _, _, created in moved), (fenced, moved)

    # The processes: each guest's old QEMU (on the victim) last seen within the fence's
    # second, then exactly one new QEMU, on its new host, first seen after the old one
    # and no earlier than the fence's second.
    lab.qemus.wait_sample(time.time())
    record = lab.qemus.snapshot()
    for instance, before in old.items():
        lives = record.of(instance)
        idents = [life.ident for life in lives]
        assert before.ident in idents, f"{instance}: its QEMU on {victim} was never seen"
        first = lives[idents.index(before.ident)]
        later = [life for life in lives if life.first_seen > first.first_seen]
        assert len(lives) == 2 and len(later) == 1, f"{instance}: QEMUs {lives}"
        new = later[0]
        assert (first.node, new.node) == (victim, hosts[instance]), lives
        assert first.last_seen < fenced + 1, (first, fenced)
        assert first.last_seen < new.first_seen and fenced <= new.first_seen, (lives, fenced)
        assert record.last is not None and new.last_seen == record.last.at, \
            f"{instance}: its new QEMU is gone: {new}"


def delete_guests(lab: EvacLab, names: list[str]) -> None:
    """Delete the case's guests (whether it passed or not: quota and CPU are shared)."""
    for name in names:
        lab.client("openstack", "server", "delete", "--wait", name, timeout=180, check=False)


def test_a_frozen_hypervisor_is_fenced_then_evacuated_and_its_qemus_never_run_again(
        lab: EvacLab) -> None:
    """A hung hypervisor: every process of the node SIGSTOPped, its guests' QEMUs
    included (stopped, they still hold their disks). Nobody may start a guest elsewhere
    until the fence has killed the stopped QEMUs; then each runs once, on a survivor."""
    lab.whole_again()
    victim = quiet_victim(lab)
    names = ["frozen0", "frozen1"]
    try:
        old = guests_on(lab, victim, names)
        earlier = {(e.action, e.completed) for e in kills(lab, victim)}
        since = time.time()
        assert faults.freeze(LAB_DIR, victim) > 0
        assert_evacuated_once(lab, victim, old, earlier, since, "frozen")
        record = lab.qemus.snapshot()
        for instance, before in old.items():
            [first] = [life for life in record.of(instance) if life.ident == before.ident]
            assert first.seen_stopped, f"{instance}'s QEMU was never seen frozen: {first}"
            assert first.last_seen > since
    finally:
        delete_guests(lab, names)


def test_a_hypervisor_cut_from_the_network_is_fenced_then_evacuated(lab: EvacLab) -> None:
    """A hypervisor whose link is down keeps running, guests and all: only the fence
    ends them, and only after it do they run on a survivor, once each."""
    lab.whole_again()
    victim = quiet_victim(lab)
    names = ["cut0", "cut1"]
    try:
        old = guests_on(lab, victim, names)
        earlier = {(e.action, e.completed) for e in kills(lab, victim)}
        since = time.time()
        faults.cut(LAB_DIR, victim)
        assert_evacuated_once(lab, victim, old, earlier, since, "cut")
        record = lab.qemus.snapshot()
        for instance, before in old.items():
            [first] = [life for life in record.of(instance) if life.ident == before.ident]
            assert first.last_seen > since and not first.seen_stopped, first
    finally:
        delete_guests(lab, names)


@pytest.fixture
def doomed(lab: EvacLab) -> Iterator[list[str]]:
    """Names of guests the test boots, deleted after it whatever its outcome."""
    names: list[str] = []
    yield names
    delete_guests(lab, names)


def test_a_failing_fence_evacuates_nothing_until_a_later_fence_succeeds(
        lab: EvacLab, doomed: list[str]) -> None:
    """The victim is cut from the network and its fence device fails (its outlet on the
    power switch is jammed: the agent answers failure). The victim runs on, isolated:
    nothing may be evacuated, the controller alerts, and the guests keep running in
    the very same QEMU processes. The operator mends the outlet and fences again
    (``stonith_admin --fence``): then, and only then, the guests move, once each."""
    lab.whole_again()
    victim = quiet_victim(lab)
    names = ["jam0", "jam1"]
    doomed += names
    old = guests_on(lab, victim, names)
    survivor = next(n for n in NODES if n != victim)
    earlier = {(e.action, e.completed) for e in kills(lab, victim)}
    faults.jam_fence(LAB_DIR, victim)
    try:
        since = time.time()
        faults.cut(LAB_DIR, victim)

        def alerted() -> dict[str, Any] | None:
            ev = newest_event(lab, survivor, victim)
            return ev if ev is not None and ev["detected_at"] > since and \
                "fence-failed" in ev["alerts"] else None
        event = wait_until(alerted, 180, f"the controller alerting on {victim}'s failed fence",
                           interval=2)
        assert event["state"] == "detected", event
        observer = lab.observer(excluding=(victim,))
        assert observer is not None
        failed = [e for e in cluster.fence_history(observer)
                  if e.target == victim and e.status == "failed"]
        assert failed, "no failed fence of the victim in the stonith history"
        assert {(e.action, e.completed) for e in kills(lab, victim)} == earlier, \
            "a fence succeeded although the outlet is jammed"
        controller = lab.view(excluding=(victim,))
        assert controller is not None
        [where] = controller.running_on("haven-evacuator")
        log = node.exec_in(lab.state().nodes[where],
                           ["cat", "/var/log/haven/haven-evacuator.log"], timeout=30).stdout
        assert f"ALERT: event {event['id']} {victim}: fencing failed" in log
        # Untouched: no evacuation, still on the victim, the same QEMU processes running.
        assert migrations_from(lab, survivor, victim, since) == []
        servers = {s["ID"]: s for s in lab.servers()}
        assert all(servers[i]["Host"] == victim for i in old), servers
        here = lab.running_on(victim)
        assert {i: [q.ident for q in here.get(i, [])] for i in old} == \
            {i: [q.ident] for i, q in old.items()}
        TIMINGS["failing fence: event"] = f"{event['state']}, alerts {event['alerts']}"
    finally:
        faults.jam_fence(LAB_DIR, victim, jam=False)
    node.exec_in(lab.state().nodes[survivor], ["stonith_admin", "--fence", victim],
                 timeout=120, check=False)
    assert_evacuated_once(lab, victim, old, earlier, since, "fence failed, then succeeded",
                          one_fence=False)


def test_the_controllers_node_lost_mid_evacuation_the_next_controller_finishes_it_once(
        lab: EvacLab, doomed: list[str]) -> None:
    """The node running the evacuation controller dies while the guests of a lost
    hypervisor are being rebuilt. The next controller (Pacemaker starts it on a
    survivor) must finish that evacuation from the records, calling nothing twice:
    each guest rebuilt once, on one host, and never running twice.

    Three nodes keep quorum (and Galera its primary component) through one loss at a
    time only, so the hypervisor H is powered back on before the controller's node C
    dies; and the evacuation is held in its middle by stopping (SIGSTOP) libvirtd on
    the target T, so that the rebuilds the first controller started are still
    running when C dies. C's hypervisor is disabled by the operator: T is the only
    target. Its libvirtd resumes once the second controller runs."""
    lab.whole_again()
    view = lab.view()
    assert view is not None
    [controller] = view.running_on("haven-evacuator")
    victim = quiet_victim(lab)
    target = next(n for n in NODES if n not in (victim, controller))
    names = ["mid0", "mid1"]
    doomed += names
    old = guests_on(lab, victim, names)
    earlier = {(e.action, e.completed) for e in kills(lab, victim)}
    st = lab.state()
    libvirtd = faults.matching(node.pids(st.nodes[target]), "libvirtd")
    assert libvirtd, f"no libvirtd on {target}"
    lab.openstack("compute", "service", "set", "--disable", "--disable-reason",
                  "test: not a target", controller, "nova-compute")
    try:
        for pid in libvirtd:
            os.kill(pid, signal.SIGSTOP)
        since = time.time()
        faults.kill(LAB_DIR, victim)

        def rebuilding() -> dict[str, Any] | None:
            ev = newest_event(lab, target, victim)
            if ev is None or ev["detected_at"] <= since:
                return None
            shown = json.loads(lab.haven(target, "evacuation", "show", str(ev["id"]),
                                         "--json"))
            records = shown["instances"]
            return shown if len(records) == len(old) and all(
                r["state"] == "rebuilding" and r["target"] == target for r in records) else None
        shown = wait_until(rebuilding, 180, f"every guest of {victim} rebuilding on {target}",
                           interval=1)
        assert shown["state"] == "evacuating", shown
        assert all(r["attempts"] == 1 for r in shown["instances"]), shown["instances"]

        # H comes back (quorum for the next loss); the rebuilds are still held.
        lab.power_on_all(180)
        lab.wait_stack(NODES, 400)
        now = json.loads(lab.haven(target, "evacuation", "show", str(shown["id"]), "--json"))
        assert [r["state"] for r in now["instances"]] == ["rebuilding"] * len(old), now

        # The controller's node dies in the middle of the evacuation.
        lost_at = time.time()
        faults.kill(LAB_DIR, controller)
        lab.wait_view(lambda v: bool(v.running_on("haven-evacuator"))
                      and controller not in v.running_on("haven-evacuator")
                      and controller not in v.online, 180,
                      "the next controller running on a survivor", excluding=(controller,))
    finally:
        for pid in libvirtd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def finished() -> dict[str, Any] | None:
        try:
            doc = json.loads(lab.haven(target, "evacuation", "show", str(shown["id"]),
                                       "--json"))
        except LabError:
            return None  # the database is failing over with the controller's node
        return doc if doc["state"] == "done" else None
    done = wait_until(finished, 240, f"the evacuation of {victim} finished", interval=2)
    assert done["finished_at"] > lost_at, done
    # The stonith history: H fenced once, after the kill, before any rebuild; C fenced
    # after it was lost.
    fences = [e for e in kills(lab, victim) if (e.action, e.completed) not in earlier]
    assert len(fences) == 1, fences
    fenced = completed_at(fences[0].completed)
    assert since < fenced <= done["first_rebuild_at"], (since, fenced, done)
    assert done["alive_at"] < done["fenced_at"]
    assert any(completed_at(e.completed) > lost_at for e in kills(lab, controller)), \
        f"no fence of {controller} after it was lost"
    for r in done["instances"]:
        assert (r["state"], r["attempts"], r["target"]) == ("done", 1, target), r
    # Each guest rebuilt once, on one host: one migration each, and one new QEMU, on T.
    moved = migrations_from(lab, target, victim, since)
    assert sorted(i for i, _, _ in moved) == sorted(old), moved
    assert {dest for _, dest, _ in moved} == {target}, moved
    lab.qemus.wait_sample(time.time())
    record = lab.qemus.snapshot()
    for instance, before in old.items():
        lives = record.of(instance)
        assert (lives[0].ident, lives[0].node) == (before.ident, victim), lives
        assert [life.node for life in lives[1:]] == [target], lives
        assert lives[0].last_seen < lives[1].first_seen, lives
    servers = {s["ID"]: s for s in lab.servers()}
    assert {servers[i]["Host"] for i in old} == {target}
    assert all(servers[i]["Status"] == "ACTIVE" for i in old), servers
    TIMINGS["controller's node lost mid-evacuation: finished after the loss"] = \
        f"{done['finished_at'] - lost_at:.1f} s"
    lab.openstack("compute", "service", "set", "--enable", controller, "nova-compute")

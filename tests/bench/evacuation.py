"""Evacuation benchmark: power loss of a hypervisor with N tiny guests -> every guest
running again on a survivor; Haven's controller side by side with the classic
Pacemaker way (one ``ocf:heartbeat:VirtualDomain`` resource per guest), at the
product's default corosync token and at a tuned one.

One 3-node lab per token (``--libvirt``, the whole stack, fence action off). Per
run, N guests are started on one hypervisor (not the VIP's or the controller's
node), each has printed its boot marker, then that node loses power. Both ways are
measured the same way, from the kill:

* ``running`` (the headline, one observer for both): per guest, the first poll
  (about every 0.5 s: ``virsh list --state-running`` on each survivor) that sees
  its domain running on a survivor;
* ``marker``: a second ``HAVEN-TINY-BOOTED`` in its console log on the shared
  directory (the guest booted again);
* Haven only, a second figure: ``db_active``, when the compute agent recorded the
  instance ACTIVE on a survivor (its ``updated_at``, written once the domain runs),
  and the controller's own phase timings (``haven evacuation show``).

Both ways run their guests at the same niceness (``GUEST_NICE``, libvirt's and
Haven's default 0): the VirtualDomain agent cannot renice the QEMUs it starts, so
Haven's lab setting (19) is turned off here rather than given to one side only.
Every result records the corosync token the cluster reported running.

Between runs the guests are deleted and the victim is powered on again. It builds
the tiny guest image itself when missing (images/tiny/build.py).
Prints one JSON document and one human line per token, way and size, then the
ways side by side.
Usage: python tests/bench/evacuation.py [--sizes 5,10,20] [--runs 3] [--vd-sizes 20]
       [--vd-runs 3] [--tokens 3000,1500] [--keep-logs] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.dom import minidom

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.compute.virt.libvirt import PREFIX, DomainSpec, domain_xml  # noqa: E402
from core.compute.virt.qemuuser import create_private, give_disk, run_private  # noqa: E402
from ha.lab import faults, lifecycle, node, stack, state  # noqa: E402
from ha.lab.commands import LabError, wait_until  # noqa: E402
from tests.bench.benchlib import (  # noqa: E402
    DEFAULT_TOKENS,
    TINY_DIR,
    check_token,
    ensure_tiny,
    parse_sizes,
    parse_tokens,
    running_token,
    seconds,
    summary,
)
from tests.bench.cpu_profile import CpuSampler  # noqa: E402
from tests.lab.labtools import StackLab, keep_logs  # noqa: E402

NODES = ["node1", "node2", "node3"]
TINY = TINY_DIR / "tiny.qcow2"
GUEST_NICE = 0
"""Both ways' guests run at this niceness (see the module's docstring)."""
MARKER = "HAVEN-TINY-BOOTED"
LAB_DIR = state.default_lab_dir()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench(StackLab):
    def survivors(self, victim: str) -> list[state.NodeState]:
        return [nd for n, nd in self.state().nodes.items() if n != victim and node.running(nd)]

    def running(self, victim: str) -> dict[str, str]:
        """Running domain name -> node, on the survivors: the one observer of both ways.
        Running, not only active: Haven starts a guest paused, renices it, resumes it."""
        where = {}
        for nd in self.survivors(victim):
            try:
                out = node.exec_in(nd, ["virsh", "list", "--state-running", "--name"],
                                   check=False, timeout=20).stdout
            except LabError as exc:  # libvirtd busy starting guests: this poll sees
                log(f"poll of {nd.name}: {exc}")  # nothing there, the next one may
                continue
            for name in out.split():
                where[name] = nd.name
        return where

    def pick_victim(self) -> str:
        view = self.wait_view(lambda v: bool(v.running_on("haven-evacuator")), 120,
                              "the controller")
        busy = set(view.running_on("vip")) | set(view.running_on("haven-evacuator"))
        return next(n for n in reversed(NODES) if n not in busy)

    def cleanup(self, *argv: str) -> str:
        """An openstack command after the measurement, retried for up to 300 s: the
        figures are taken, so the VIP moving or the API busy must not lose them."""
        def attempt() -> str | None:
            result = self.client("openstack", *argv, check=False)
            if result.returncode == 0:
                return result.stdout or "ok"
            log(f"cleanup: openstack {' '.join(argv)}: {result.stderr.strip()[-200:]}")
            return None
        return wait_until(attempt, 300, f"openstack {' '.join(argv)}", interval=3)

    def restore(self) -> None:
        self.power_on_all(180)
        self.wait_stack(NODES, 600)


def markers(path: Path) -> int:
    try:
        return path.read_text(errors="replace").count(MARKER)
    except FileNotFoundError:
        return 0


class ProfileWindow:
    """With ``--profile``: CPU seconds per kind of process from now (just before the
    kill) to the first ``close()`` (every guest active), logged and kept in ``cpu``."""

    def __init__(self, enabled: bool) -> None:
        self.sampler = CpuSampler() if enabled else None
        self.cpu: dict[str, float] | None = None
        if self.sampler is not None:
            self.sampler.start()

    def close(self) -> None:
        if self.sampler is None or self.cpu is not None:
            return
        self.cpu = self.sampler.stop()
        log(f"CPU seconds from the kill to all active ({self.sampler.seconds:.1f} s on "
            f"{os.cpu_count()} cores): {self.cpu}")


def kill_and_watch(victim: str, consoles: dict[str, Path],
                   running_now: Callable[[], set[str]], timeout: float, profile: bool,
                   reboot: Callable[[str], object] | None = None,
                   recorded_now: Callable[[], dict[str, float]] | None = None,
                   ) -> dict[str, Any]:
    """Once every guest has printed its first boot marker, cut the victim's power and
    poll (about every 0.5 s) until every guest runs again on a survivor
    (``running_now``: the same observer for both ways), has printed a boot marker
    after the kill, and, with ``recorded_now``, is recorded active by the system
    (Haven: when its agent wrote ACTIVE); seconds from the kill, per guest.

    ``running_s`` is the poll that first saw a guest running: up to a poll late (0.3
    to 0.6 s measured under the evacuation's load), the same lateness for both ways.
    A recorded time outside (kill, now] is taken as the poll's.

    A guest whose console stays silent is rebooted once (``reboot``) before the kill:
    seen 3 times in ~60 guests, a TCG guest idle in its kernel with nothing on its serial console
    after the boot loader's banner; that is the guest, not what is measured here."""
    n = len(consoles)

    def all_booted() -> bool:
        return all(markers(p) >= 1 for p in consoles.values())

    if reboot is not None:
        try:
            wait_until(all_booted, 300, "every guest's first boot marker", interval=1)
        except LabError:
            for ident in [i for i, p in consoles.items() if markers(p) < 1]:
                log(f"guest {ident} printed no boot marker in 300 s: rebooting it")
                reboot(ident)
    wait_until(all_booted, 600, "every guest's first boot marker", interval=1)
    # A guest restarted before the kill (a start retried) has printed more than one
    # marker: its next boot is the first marker after the kill's count, not the second.
    before = {x: markers(p) for x, p in consoles.items()}
    window = ProfileWindow(profile)
    t0 = time.time()
    faults.kill(LAB_DIR, victim)
    running: dict[str, float] = {}
    recorded: dict[str, float] = {}
    marked: dict[str, float] = {}
    deadline = time.time() + timeout

    def done() -> bool:
        return (len(running) == n and len(marked) == n
                and (recorded_now is None or len(recorded) == n))

    while not done() and time.time() < deadline:
        now_running = running_now()
        now = time.time()
        for x in now_running:
            running.setdefault(x, now - t0)
        if len(running) == n:
            window.close()
        if recorded_now is not None:
            for x, at in recorded_now().items():
                if x not in recorded:
                    recorded[x] = (at if t0 < at <= time.time() else time.time()) - t0
        for x, path in consoles.items():
            if x not in marked and markers(path) > before[x]:
                marked[x] = time.time() - t0
        time.sleep(0.5)
    return watch_result(n, running, marked, recorded if recorded_now is not None else None,
                        window.cpu)


def watch_result(n: int, running: dict[str, float], marked: dict[str, float],
                 recorded: dict[str, float] | None, cpu: dict[str, float] | None,
                 ) -> dict[str, Any]:
    """One run's figures; a figure some guest never reached is None (never a number
    that looks like a time), and ``complete`` says whether every guest got there."""
    def last(times: dict[str, float]) -> float | None:
        return round(max(times.values()), 2) if len(times) == n else None

    result: dict[str, Any] = {
        "all_running_s": last(running), "all_markers_s": last(marked),
        "running_s": sorted(round(v, 2) for v in running.values()),
        "marker_s": sorted(round(v, 2) for v in marked.values()),
        "complete": len(running) == n and len(marked) == n}
    if recorded is not None:
        result["all_db_active_s"] = last(recorded)
        result["db_active_s"] = sorted(round(v, 2) for v in recorded.values())
        result["complete"] = result["complete"] and len(recorded) == n
    if cpu is not None:
        result["cpu_s"] = cpu
    return result


# ---- Haven ---------------------------------------------------------------------------
def haven_run(lab: Bench, n: int, profile: bool = False) -> dict[str, Any]:
    victim = lab.pick_victim()
    survivor = next(x for x in NODES if x != victim)
    others = [x for x in NODES if x != victim]
    for other in others:
        lab.openstack("compute", "service", "set", "--disable", other, "nova-compute")
    names = [f"b{n}-{i}" for i in range(n)]
    try:
        for name in names:
            lab.openstack("server", "create", "--image", "tiny", "--flavor", "m1.tiny",
                          "--network", "provider", name)
        ids = wait_until(lambda: _active_ids(lab, names), 600, f"{n} guests ACTIVE", interval=2)
    finally:
        for other in others:
            lab.openstack("compute", "service", "set", "--enable", other, "nova-compute")
    consoles = {i: stack.paths(LAB_DIR).shared / "instances" / i / "console.log" for i in ids}

    def running_now() -> set[str]:
        """Instances whose domain runs on a survivor (Haven names domains haven-UUID)."""
        running = lab.running(victim)
        return {i for i in ids if f"haven-{i}" in running}

    def recorded_now() -> dict[str, float]:
        """Instances the agent recorded ACTIVE, with no task, on a survivor: when (the
        row's updated_at, written after the domain's start and resume returned)."""
        rows = lab.sql(survivor, "SELECT id, host, vm_state, IFNULL(task_state, '-'), "
                                 "updated_at FROM instances WHERE deleted = 0")
        found: dict[str, float] = {}
        for i in range(0, len(rows), 5):
            ident, host, vm, task, updated = rows[i:i + 5]
            if ident in ids and host != victim and vm == "active" and task == "-":
                found[ident] = float(updated)
        return found

    watch = kill_and_watch(victim, consoles, running_now, 600, profile,
                           reboot=lambda i: lab.openstack("server", "reboot", "--hard", i),
                           recorded_now=recorded_now)
    events = json.loads(lab.haven(survivor, "evacuation", "list", "--json"))
    event = next(e for e in events if e["host"] == victim)
    result = {"victim": victim, "n": n, **watch, "phases_s": event["phases_s"]}
    log(f"haven N={n} result: {json.dumps(result)}")
    def all_deleted() -> bool:
        """Delete what is left of the guests; a delete whose answer was lost (the API
        closed the connection under the evacuation's load) is found gone by the list."""
        left = [s["ID"] for s in json.loads(lab.cleanup("server", "list", "-f", "json"))
                if s["Name"] in names]
        for ident in left:
            lab.client("openstack", "server", "delete", ident, check=False)
        return not left
    wait_until(all_deleted, 300, "the guests deleted", interval=2)
    return result


def _active_ids(lab: Bench, names: list[str]) -> list[str] | None:
    servers = json.loads(lab.openstack("server", "list", "-f", "json"))
    mine = [s for s in servers if s["Name"] in names]
    if len(mine) == len(names) and all(s["Status"] == "ACTIVE" for s in mine):
        return [s["ID"] for s in mine]
    return None


# ---- VirtualDomain -------------------------------------------------------------------
def vd_run(lab: Bench, n: int, profile: bool = False) -> dict[str, Any]:
    victim = lab.pick_victim()
    first = next(nd for nd in lab.survivors(victim))
    vd_dir = stack.paths(LAB_DIR).shared / "vd"
    vd_dir.mkdir(exist_ok=True)
    consoles = {}
    domains = {}  # libvirt's name of each guest's domain (Haven's naming) -> the guest
    for i in range(n):
        name = f"vd{i}"
        disk = vd_dir / f"{name}.qcow2"
        disk.unlink(missing_ok=True)
        run_private(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(TINY), "-F",
                     "qcow2", str(disk)])
        give_disk(disk)  # QEMU runs as libvirt-qemu, as the compute agent's guests do
        consoles[name] = vd_dir / f"{name}.console"
        consoles[name].unlink(missing_ok=True)
        create_private(consoles[name])
        give_disk(consoles[name])
        spec = DomainSpec(uuid=str(uuid.uuid4()), name=name, vcpus=1, memory_mb=256,
                          disk_path=disk, console_path=consoles[name], mac_address=None,
                          project_id="bench", cloud_id="virtualdomain-bench")
        domains[PREFIX + spec.uuid] = name
        # VirtualDomain finds the domain's name by a line match on <name>: one per line
        pretty = minidom.parseString(domain_xml(spec, "qemu")).toprettyxml(indent="  ")
        (vd_dir / f"{name}.xml").write_text(pretty)
        node.exec_in(first, ["pcs", "resource", "create", name, "ocf:heartbeat:VirtualDomain",
                             f"config={vd_dir / f'{name}.xml'}", "hypervisor=qemu:///system",
                             "force_stop=true", "op", "start", "timeout=120s",
                             "op", "stop", "timeout=60s",
                             "op", "monitor", "interval=10s", "timeout=30s", "--disabled"])
        node.exec_in(first, ["pcs", "constraint", "location", name, "prefers",
                             f"{victim}=200"])
    for i in range(n):
        node.exec_in(first, ["pcs", "resource", "enable", f"vd{i}"])
    names = list(consoles)
    lab.wait_view(lambda v: all(v.running_on(x) == (victim,) for x in names), 600,
                  f"{n} VirtualDomain guests on {victim}")

    def running_now() -> set[str]:
        """Guests whose domain runs on a survivor (VirtualDomain keeps the XML's name,
        Haven's ``instance-<uuid>``: the resource's name is not the domain's)."""
        return {domains[d] for d in lab.running(victim) if d in domains}

    result = {"victim": victim, "n": n,
              **kill_and_watch(victim, consoles, running_now, 900, profile)}
    log(f"virtualdomain N={n} result: {json.dumps(result)}")
    for x in names:
        node.exec_in(first, ["pcs", "resource", "delete", x, "--force"], timeout=120,
                     check=False)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("5,10,20"),
                        help="Haven's guests per run (default 5,10,20)")
    parser.add_argument("--runs", type=int, default=3, help="Haven runs per size")
    parser.add_argument("--vd-sizes", type=parse_sizes, default=parse_sizes("20"),
                        help="VirtualDomain guests per run (default 20)")
    parser.add_argument("--vd-runs", type=int, default=3, help="VirtualDomain runs per size")
    parser.add_argument("--tokens", type=parse_tokens, default=parse_tokens(DEFAULT_TOKENS),
                        help=f"corosync tokens (ms), one lab each, side by side (default "
                             f"{DEFAULT_TOKENS}: the product's default, then a tuned one)")
    parser.add_argument("--profile", action="store_true",
                        help="CPU seconds per kind of process from the kill to all running")
    parser.add_argument("--keep-logs", action="store_true",
                        help="copy every node's logs out of the lab before it goes down")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.vd_runs < 1:
        parser.error("--runs and --vd-runs: at least 1")
    return args


def size_summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """One way and size at one token: every figure's p50/min/max over the runs that
    completed (a run some guest never finished counts in ``runs`` only)."""
    done = [r for r in rs if r["complete"]]
    doc: dict[str, Any] = {
        "all_running_s": summary([r["all_running_s"] for r in done]),
        "all_markers_s": summary([r["all_markers_s"] for r in done]),
        "complete_runs": len(done), "runs": len(rs)}
    if any("all_db_active_s" in r for r in rs):
        doc["all_db_active_s"] = summary([r["all_db_active_s"] for r in done])
    return doc


def token_doc(token_ms: int, running_ms: int,
              results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    doc: dict[str, Any] = {"corosync_token_ms": token_ms,
                           "corosync_token_running_ms": running_ms, "guest_nice": GUEST_NICE,
                           "summary": {}, "runs": results}
    for way, rs in results.items():
        for n in sorted({r["n"] for r in rs}):
            doc["summary"][f"{way} N={n}"] = size_summary([r for r in rs if r["n"] == n])
    return doc


def human(doc: dict[str, Any]) -> list[str]:
    lines = []
    for key, s in doc["summary"].items():
        db = (f"; Haven's database recorded all ACTIVE p50 {seconds(s['all_db_active_s']['p50'])}"
              if "all_db_active_s" in s else "")
        lines.append(
            f"evacuation {key} at corosync token {doc['corosync_token_ms']} ms: every guest "
            f"running on a survivor p50 {seconds(s['all_running_s']['p50'])} (max "
            f"{seconds(s['all_running_s']['max'])}), every console marker p50 "
            f"{seconds(s['all_markers_s']['p50'])}{db}; {s['complete_runs']}/{s['runs']} runs "
            f"complete")
    return lines


def side_by_side(docs: list[dict[str, Any]]) -> list[str]:
    """Haven and VirtualDomain at each size both ran, per token, on the same observer."""
    lines = []
    for doc in docs:
        sizes = sorted({int(k.split("N=")[1]) for k in doc["summary"]})
        for n in sizes:
            h, vd = doc["summary"].get(f"haven N={n}"), doc["summary"].get(f"virtualdomain N={n}")
            if h and vd:
                lines.append(f"evacuation N={n}, token {doc['corosync_token_ms']} ms, every guest "
                             f"running again (p50): Haven {seconds(h['all_running_s']['p50'])} vs "
                             f"VirtualDomain {seconds(vd['all_running_s']['p50'])}")
    return lines


def bench_token(args: argparse.Namespace, token_ms: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {"haven": [], "virtualdomain": []}
    try:
        lifecycle.up(LAB_DIR, len(NODES), with_libvirt=True, token_ms=token_ms)
        stack.up_stack(LAB_DIR, compute_overrides={"guest_nice": GUEST_NICE})
        lab = Bench(LAB_DIR)
        running_ms = running_token(lab.state().nodes[NODES[0]])
        check_token(token_ms, running_ms)
        # runs boot up to 20 guests in the admin project: lift its default quotas
        lab.openstack("quota", "set", "--instances", "-1", "--cores", "-1", "--ram", "-1",
                      "--ports", "-1", "admin")
        lab.openstack("image", "create", "--disk-format", "qcow2", "--container-format",
                      "bare", "--public", "--file", str(TINY), "tiny")
        plan = [("haven", n, args.runs) for n in args.sizes] + \
               [("virtualdomain", n, args.vd_runs) for n in args.vd_sizes]
        for way, n, runs in plan:
            for i in range(runs):
                lab.restore()
                r = (haven_run if way == "haven" else vd_run)(lab, n, args.profile)
                results[way].append(r)
                extra = (f", database recorded all ACTIVE {seconds(r['all_db_active_s'])}, "
                         f"phases {r['phases_s']}" if way == "haven" else "")
                log(f"token {token_ms} ms, {way} N={n} run {i + 1}: all running "
                    f"{seconds(r['all_running_s'])}, all markers "
                    f"{seconds(r['all_markers_s'])}{extra}")
    finally:
        if args.keep_logs:
            log(f"the lab's logs: {keep_logs(LAB_DIR)}")
        lifecycle.down(LAB_DIR)
    return token_doc(token_ms, running_ms, results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if lifecycle.busy_reason(LAB_DIR):
        print(f"a lab is up at {LAB_DIR}: run `haven lab down` first", file=sys.stderr)
        return 2
    ensure_tiny(TINY.parent)
    docs, failed = [], []
    for token_ms in args.tokens:
        try:
            docs.append(bench_token(args, token_ms))
        except (LabError, AssertionError) as exc:  # the other token still runs
            log(f"token {token_ms} ms: the bench failed: {exc}")
            failed.append({"corosync_token_ms": token_ms, "error": str(exc)})
    print(json.dumps({"benchmark": "evacuation", "results": docs, "failed": failed}, indent=2))
    for doc in docs:
        print("\n".join(human(doc)))
    print("\n".join(side_by_side(docs)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Guest-networking benchmarks (issue 11): tenant guests reached at their floating IPs
from outside the cloud, on a 3-node lab with networking (``haven lab up --libvirt``,
``haven lab stack --networking``), tiny TCG guests (images/tiny), the stock CLI for the
tenant's setup (tests/lab/tenant.py, the stack test's walk-through).

Every figure is taken by one observer, tests/bench/guest_probe.py, in the lab's switch
namespace (the provider network's outside, where users stand): an SSH answer is the
guest's ``SSH-2.0`` line through the floating IP; an API answer a 200 of ``GET
/flavors`` through the VIP. Both sides of a comparison are measured in the same run,
by the same probe loop at the same interval, on this host's clock.

``--reachable``: from ``server create`` (the ``POST /servers`` of a server whose
  port already has a floating IP) to the first SSH answer at the floating IP, p50 over
  the guests, at N=1 and N=10 created at once (``--reach-sizes``). Split by the
  guest's console (shared/instances/*/console.log, polled every 0.5 s): to
  ``HAVEN-TINY-SSH`` (the guest's own boot to dropbear listening), and from there to
  the answer at the floating IP (the network's share).
``--failover``: the probe (every 0.1 s) on a guest's floating IP and on the API. Kill 1:
  the router's shard node (neither the guest's hypervisor nor the VIP's node) loses
  power: the SSH probe's gap (last answer before to first answer after). Kill 2: the
  VIP's node (not the guest's hypervisor, not the router's) loses power: the API
  probe's gap. Per run both; the issue's goal: router gap p50 <= API gap p50 + 1 s.
``--evacuation``: N guests (``--evac-n``, default 20), each with a floating IP, on one
  hypervisor (not the VIP's, the evacuation controller's or the router's node), probed
  every 0.5 s; that node loses power. Per guest: from the kill to its first SSH
  answer at its floating IP, vs to every domain running on a survivor (``virsh list
  --state-running`` polled every 0.5 s, as tests/bench/evacuation.py observes). Goal:
  the answers' p50 within 3 s of every domain running. Split as ``--reachable`` is:
  the guest's own boot to dropbear (its console) and the network's share after it.
``--metadata``: requests/s and p99 latency of ``GET
  http://169.254.169.254/openstack/latest/meta_data.json`` as guests see it: REAL
  guests (``--md-guests``, default 4), each running ``--md-clients`` (default 5)
  concurrent busybox ``wget`` loops for ``--md-seconds`` (default 20): 20 concurrent
  clients from 4 guests, not 20 guests (20 TCG guests each running a load generator
  on this 2-core machine would measure the guests' emulation). Latency is read from
  the guest's /proc/uptime (10 ms resolution) around each ``wget`` and includes its
  fork and exec inside a TCG guest: an upper bound of the service's latency.

No flag: all four. Builds its own lab and takes it down (``haven lab down``) at the
end; refuses to start beside one. Prints one JSON document, then one human line per
figure. Under the machine's lab lock, e.g.:

  flock /tmp/haven-lab.lock sh -c 'bash appliance/setup.sh test && \\
    .venv/bin/python tests/bench/guest_network.py --reachable --failover --metadata'
  flock /tmp/haven-lab.lock sh -c 'bash appliance/setup.sh test && \\
    .venv/bin/python tests/bench/guest_network.py --evacuation --evac-n 20'

Usage: python tests/bench/guest_network.py [--reachable] [--failover] [--evacuation]
       [--metadata] [--reach-sizes 1,10] [--runs 3] [--evac-n 20] [--md-guests 4]
       [--md-clients 5] [--md-seconds 20] [--keep-logs]
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ha.lab import faults, lifecycle, node, stack, state  # noqa: E402
from ha.lab.commands import wait_until  # noqa: E402
from tests.bench.benchlib import (  # noqa: E402
    TINY_DIR,
    BenchError,
    ensure_tiny,
    parse_sizes,
    seconds,
    summary,
)
from tests.bench.evacuation import Bench  # noqa: E402
from tests.lab.labtools import keep_logs  # noqa: E402
from tests.lab.tenant import Tenant, shard_resource  # noqa: E402

NODES = ["node1", "node2", "node3"]
LAB_DIR = state.default_lab_dir()
TINY = TINY_DIR / "tiny.qcow2"
FAILOVER_INTERVAL = 0.1
EVACUATION_INTERVAL = 0.5
METADATA_URL = "http://169.254.169.254/openstack/latest/meta_data.json"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- the pure parts (tests/unit/test_guest_network_bench.py) -------------------------
def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def recovery(events: list[dict[str, Any]], target: str, t_kill: float,
             ) -> dict[str, float] | None:
    """A target's outage around the kill, from the watch log: ``gap_s`` from its last
    answer before the outage to its first answer after it, ``from_kill_s`` from the
    kill to that answer. ``{"gap_s": 0, ...}`` when the target never stopped answering
    after the kill (a control); None when it has not answered again (yet)."""
    mine = [e for e in events if e.get("target") == target]
    failed: dict[str, Any] | None = None
    for e in mine:
        if e["t"] <= t_kill:
            failed = None if e["ok"] else e  # an outage before the kill ends before it
            continue
        if not e["ok"]:
            failed = failed or e
        elif failed is not None:
            since = failed["last_ok"] if failed["last_ok"] is not None else failed["t"]
            return {"gap_s": round(e["t"] - since, 2), "from_kill_s": round(e["t"] - t_kill, 2)}
    if failed is None and any(e["ok"] for e in mine):
        return {"gap_s": 0.0, "from_kill_s": 0.0}
    return None


def metadata_figures(outputs: list[str]) -> dict[str, Any]:
    """From each guest's load output (lines ``start end ok|err`` in /proc/uptime
    seconds, one guest per string): requests/s (the sum of each guest's answered
    requests over its own window) and the latency's p50/p99 of answered requests."""
    rate = 0.0
    latencies: list[float] = []
    errors = 0
    for out in outputs:
        rows = [line.split() for line in out.splitlines() if len(line.split()) == 3]
        ok = [(float(a), float(b)) for a, b, r in rows if r == "ok"]
        errors += sum(1 for *_, r in rows if r != "ok")
        if not rows:
            continue
        window = max(float(b) for _, b, _ in rows) - min(float(a) for a, _, _ in rows)
        if window > 0:
            rate += len(ok) / window
        latencies += [b - a for a, b in ok]
    latencies.sort()
    p99 = latencies[max(0, math.ceil(0.99 * len(latencies)) - 1)] if latencies else None
    return {"requests_per_s": round(rate, 1), "answered": len(latencies), "errors": errors,
            "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "latency_p99_s": round(p99, 3) if p99 is not None else None}


# ---- the lab ----------------------------------------------------------------------------
LOAD = """D=@SECONDS@; C=@CLIENTS@
read up _ < /proc/uptime; end=$(( ${up%%.*} + D )); i=0
while [ $i -lt $C ]; do
  i=$((i+1))
  ( while :; do
      read a _ < /proc/uptime; [ ${a%%.*} -ge $end ] && break
      if wget -q -O /dev/null @URL@; then r=ok; else r=err; fi
      read b _ < /proc/uptime; echo "$a $b $r"
    done > /tmp/md.$i ) &
done
wait; cat /tmp/md.*
"""


def console_listening(text: str) -> str | None:
    """The guest's hostname once its console says dropbear listens, else None."""
    names = [ln.split()[1] for ln in text.splitlines()
             if ln.startswith("HAVEN-TINY-HOSTNAME ") and len(ln.split()) == 2]
    return names[0] if names and "HAVEN-TINY-SSH " in text else None


class ConsoleWatch(threading.Thread):
    """Polls the consoles of new guests (shared/instances/*/console.log) every 0.5 s:
    when each of ``names`` said dropbear listens (the guest's own boot), to tell the
    guest's share of a figure from the network's."""

    def __init__(self, instances: Path, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.instances, self.names = instances, set(names)
        self.listening: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and len(self.listening) < len(self.names):
            for path in self.instances.glob("*/console.log"):
                try:
                    name = console_listening(path.read_text(errors="replace"))
                except OSError:
                    continue
                if name in self.names and name not in self.listening:
                    self.listening[name] = time.time()
            self.done.wait(0.5)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)


class NetBench(Bench):
    def __init__(self, lab_dir: Path, work: Path) -> None:
        super().__init__(lab_dir)
        self.work = work
        self.tenant = Tenant(self, work)
        self.image = ""
        self.router = ""
        self.guests: dict[str, dict[str, Any]] = {}  # name -> port, fip, id, host

    def setup(self) -> None:
        self.openstack("quota", "set", "--instances", "-1", "--cores", "-1", "--ram", "-1",
                       "--ports", "-1", "--floating-ips", "-1", "admin")
        self.image = self.openstack("image", "create", "--disk-format", "qcow2",
                                    "--container-format", "bare", "--public", "--file",
                                    str(TINY), "tiny", "-f", "value", "-c", "id").strip()
        self.tenant.network()
        self.router = self.openstack("router", "show", "r1", "-f", "value", "-c", "id").strip()

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT),
                "REQUESTS_CA_BUNDLE": str(stack.paths(self.lab_dir).ca / "ca.crt")}

    def probe_argv(self, *argv: str) -> list[str]:
        return stack.client_argv(self.state(), [sys.executable, "-m",
                                                "tests.bench.guest_probe", *argv])

    def auth(self) -> tuple[str, str]:
        return stack.auth_url(self.state()), str(stack.paths(self.lab_dir).admin_password)

    def launch(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """Ports with floating IPs first (the stock CLI), then every server created at
        once by the probe, which times each from its create to its first SSH answer."""
        servers = []
        for name in names:
            port = self.openstack("port", "create", "--network", "net1", f"{name}-port",
                                  "-f", "value", "-c", "id").strip()
            fip = self.openstack("floating", "ip", "create", "--port", port, "provider",
                                 "-f", "value", "-c", "floating_ip_address").strip()
            servers.append({"name": name, "port": port, "fip": fip})
        spec = self.work / f"launch-{names[0]}.json"
        out = spec.with_suffix(".out")
        spec.write_text(json.dumps({
            "image": self.image, "flavor": "1", "key_name": "k1", "servers": servers,
            "user_data": base64.b64encode(self.tenant.user_data.read_bytes()).decode()}))
        consoles = ConsoleWatch(stack.paths(self.lab_dir).shared / "instances", names)
        consoles.start()
        try:
            subprocess.run(self.probe_argv("launch", *self.auth(), str(spec), str(out)),
                           cwd=ROOT, env=self.env(), check=True, timeout=900)
        finally:
            consoles.stop()
        results = json.loads(out.read_text())
        for s in servers:
            r = results[s["name"]]
            if r.get("status") != 202:
                raise BenchError(f"server create {s['name']}: {r}")
            self.guests[s["name"]] = {**s, "id": r["id"], "t_create": r["t_create"],
                                      "t_answer": r["t_answer"],
                                      "t_listening": consoles.listening.get(s["name"])}
        return {n: self.guests[n] for n in names}

    def host_of(self, name: str) -> str:
        return self.openstack("server", "show", self.guests[name]["id"], "-f", "value", "-c",
                              "OS-EXT-SRV-ATTR:host").strip()

    def delete_all(self) -> None:
        for name, g in list(self.guests.items()):
            self.cleanup("server", "delete", g["id"])
            self.cleanup("floating", "ip", "delete", g["fip"])
            del self.guests[name]

        def gone() -> bool:
            return not json.loads(self.cleanup("server", "list", "-f", "json"))
        wait_until(gone, 300, "every server deleted", interval=3)
        for port in json.loads(self.cleanup("port", "list", "--network", "net1", "-f",
                                            "json")):
            if port["Name"].endswith("-port"):
                self.cleanup("port", "delete", port["ID"])

    def place(self, resource: str, where: str) -> None:
        """``resource`` onto ``where`` (pcs resource move, then clear: stickiness keeps
        it there)."""
        view = self.wait_view(lambda v: bool(v.running_on(resource)), 120, resource)
        if list(view.running_on(resource)) == [where]:
            return
        nd = self.state().nodes[where]
        node.exec_in(nd, ["pcs", "resource", "move", resource, where], timeout=60)
        self.wait_view(lambda v: list(v.running_on(resource)) == [where], 180,
                       f"{resource} on {where}")
        node.exec_in(nd, ["pcs", "resource", "clear", resource], timeout=60)

    def watch(self, name: str, interval: float, fips: list[str], api: bool,
              ) -> tuple[subprocess.Popen[bytes], Path]:
        out = self.work / f"watch-{name}.jsonl"
        argv = ["watch", str(out), str(interval)]
        for fip in fips:
            argv += ["--ssh", fip]
        if api:
            argv += ["--api", *self.auth()]
        proc = subprocess.Popen(self.probe_argv(*argv), cwd=ROOT, env=self.env())
        wait_until(lambda: any("ready" in e for e in read_events(out)), 300,
                   f"every target of the {name} probe answering")
        return proc, out

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], out: Path) -> None:
        out.with_suffix(".stop").touch()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


# ---- 1. reachable ---------------------------------------------------------------------
def bench_reachable(lab: NetBench, sizes: list[int]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for n in sizes:
        got = lab.launch([f"r{n}-{i}" for i in range(n)])
        times = [g["t_answer"] - g["t_create"] for g in got.values() if g["t_answer"]]
        boot = [g["t_listening"] - g["t_create"] for g in got.values() if g["t_listening"]]
        net = [g["t_answer"] - g["t_listening"] for g in got.values()
               if g["t_answer"] and g["t_listening"]]
        doc[f"N={n}"] = {"create_to_ssh_s": summary(times), "answered": len(times),
                         "create_to_dropbear_on_console_s": summary(boot),
                         "console_to_answer_s": summary(net),
                         "guests": n, "per_guest_s": sorted(round(t, 2) for t in times)}
        log(f"reachable N={n}: {doc[f'N={n}']}")
    return doc


def human_reachable(doc: dict[str, Any]) -> list[str]:
    return [f"guest reachable {key}: server create to the first SSH answer at its floating "
            f"IP p50 {seconds(d['create_to_ssh_s']['p50'])} (max "
            f"{seconds(d['create_to_ssh_s']['max'])}; {d['answered']}/{d['guests']} answered); "
            f"of which to dropbear listening on the guest's console p50 "
            f"{seconds(d['create_to_dropbear_on_console_s']['p50'])}, from there to the "
            f"answer at the floating IP p50 {seconds(d['console_to_answer_s']['p50'])}"
            for key, d in doc.items()]


# ---- 4. metadata ----------------------------------------------------------------------
def bench_metadata(lab: NetBench, n_guests: int, clients: int, secs: int) -> dict[str, Any]:
    have = list(lab.guests)
    if len(have) < n_guests:
        lab.launch([f"m-{i}" for i in range(n_guests - len(have))])
    names = list(lab.guests)[:n_guests]
    for name in names:
        lab.tenant.trust_host_key(name=lab.guests[name]["id"], fip=lab.guests[name]["fip"])
    script = (LOAD.replace("@SECONDS@", str(secs)).replace("@CLIENTS@", str(clients))
              .replace("@URL@", METADATA_URL))
    with ThreadPoolExecutor(len(names)) as pool:
        done = list(pool.map(lambda n: lab.tenant.ssh(script, lab.guests[n]["fip"],
                                                      timeout=secs + 120), names))
    failed = [(n, d.stderr[-200:]) for n, d in zip(names, done, strict=True) if d.returncode]
    if failed:
        raise BenchError(f"the metadata load did not run: {failed}")
    figures = metadata_figures([d.stdout for d in done])
    if not figures["answered"]:
        raise BenchError(f"no metadata request was answered ({figures['errors']} failed)")
    doc = {"guests": n_guests, "clients_per_guest": clients, "seconds": secs,
           "clients": n_guests * clients, "load": "busybox wget loops inside real guests",
           **figures}
    log(f"metadata: {doc}")
    return doc


def human_metadata(doc: dict[str, Any]) -> list[str]:
    return [f"metadata service: {doc['requests_per_s']} requests/s, latency p99 "
            f"{seconds(doc['latency_p99_s'])} (p50 {seconds(doc['latency_p50_s'])}), "
            f"{doc['clients']} concurrent clients ({doc['guests']} real guests x "
            f"{doc['clients_per_guest']} busybox wget loops, {doc['seconds']} s; "
            f"{doc['errors']} errors; latency includes the wget's fork+exec in a TCG "
            f"guest, 10 ms resolution)"]


# ---- 2. router failover vs API failover --------------------------------------------------
def kill_until(lab: NetBench, victim: str, out: Path, target: str, t_limit: float,
               ) -> tuple[float, dict[str, float]]:
    """Cut ``victim``'s power; when ``target`` answered again after an outage, and
    the victim's fence is in the history (so that powering it on is a new boot)."""
    fences = len(lab.fences(victim))
    t_kill = time.time()
    faults.kill(LAB_DIR, victim)

    def back() -> dict[str, float] | None:
        found = recovery(read_events(out), target, t_kill)
        return found if found is not None and found["gap_s"] > 0 else None
    found = wait_until(back, t_limit, f"{target} answering again after {victim}'s power loss",
                       interval=0.5)
    lab.wait_new_fence(victim, fences, timeout=120)
    return t_kill, found


def bench_failover(lab: NetBench, runs: int) -> dict[str, Any]:
    if not lab.guests:
        lab.launch(["f-0"])
    name = next(iter(lab.guests))
    fip = lab.guests[name]["fip"]
    per_run: list[dict[str, Any]] = []
    shard = shard_resource(lab.router)
    for i in range(runs):
        lab.restore()
        host = lab.host_of(name)
        vip_node, router_node = [n for n in NODES if n != host]
        result: dict[str, Any] = {"guest_host": host}
        for kill, victim in (("router", router_node), ("api", vip_node)):
            lab.place("vip", vip_node)
            lab.place(shard, router_node)
            proc, out = lab.watch(f"{kill}-{i}", FAILOVER_INTERVAL, [fip], api=True)
            try:
                target = f"ssh {fip}" if kill == "router" else "api"
                t_kill, found = kill_until(lab, victim, out, target, 300)
                time.sleep(3)  # the other target's outage, if any, is seen to its end
                other = "api" if kill == "router" else f"ssh {fip}"
                control = recovery(read_events(out), other, t_kill)
            finally:
                lab.stop(proc, out)
            result[kill] = {"victim": victim, **found, "other_target": control}
            log(f"failover run {i + 1}, {kill} node {victim} killed: {found}; "
                f"the other target: {control}")
            lab.restore()
        per_run.append(result)
    router = [r["router"]["gap_s"] for r in per_run]
    api = [r["api"]["gap_s"] for r in per_run]
    # the controls: the SSH path when only the VIP's node died, the API when only the
    # router's node died (a gap there is a coupling, not the failover measured)
    ssh_control = [r["api"]["other_target"]["gap_s"] for r in per_run
                   if r["api"]["other_target"] is not None]
    api_control = [r["router"]["other_target"]["gap_s"] for r in per_run
                   if r["router"]["other_target"] is not None]
    doc = {"runs": runs, "interval_s": FAILOVER_INTERVAL,
           "router_gap_s": summary(router), "api_gap_s": summary(api),
           "ssh_gap_when_the_vip_node_died_s": summary(ssh_control),
           "api_gap_when_the_router_node_died_s": summary(api_control), "per_run": per_run}
    if router and api:
        doc["router_minus_api_p50_s"] = round(statistics.median(router)
                                              - statistics.median(api), 2)
    return doc


def human_failover(doc: dict[str, Any]) -> list[str]:
    return [f"router failover over {doc['runs']} runs: SSH probe gap at the floating IP p50 "
            f"{seconds(doc['router_gap_s']['p50'])} (max {seconds(doc['router_gap_s']['max'])})"
            f" vs API failover through the VIP p50 {seconds(doc['api_gap_s']['p50'])} (max "
            f"{seconds(doc['api_gap_s']['max'])}); router - API "
            f"{seconds(doc.get('router_minus_api_p50_s'))} (goal <= 1 s); controls: SSH gap "
            f"when only the VIP's node died p50 "
            f"{seconds(doc['ssh_gap_when_the_vip_node_died_s']['p50'])}, API gap when only "
            f"the router's node died p50 "
            f"{seconds(doc['api_gap_when_the_router_node_died_s']['p50'])}"]


# ---- 3. evacuation with networking -------------------------------------------------------
def bench_evacuation(lab: NetBench, n: int) -> dict[str, Any]:
    lab.delete_all()  # only this run's guests on the victim: the figure is its N
    lab.restore()
    victim = lab.pick_victim()
    others = [x for x in NODES if x != victim]
    lab.place(shard_resource(lab.router), others[0])
    for other in others:
        lab.openstack("compute", "service", "set", "--disable", other, "nova-compute")
    try:
        guests = lab.launch([f"e{n}-{i}" for i in range(n)])
    finally:
        for other in others:
            lab.openstack("compute", "service", "set", "--enable", other, "nova-compute")
    if any(g["t_answer"] is None for g in guests.values()):
        raise BenchError("a guest never answered before the kill")
    fips = {g["fip"]: name for name, g in guests.items()}
    domains = {f"haven-{g['id']}": name for name, g in guests.items()}
    consoles = {name: stack.paths(LAB_DIR).shared / "instances" / g["id"] / "console.log"
                for name, g in guests.items()}
    before = {name: ssh_lines(path) for name, path in consoles.items()}
    proc, out = lab.watch("evacuation", EVACUATION_INTERVAL, list(fips), api=False)
    running: dict[str, float] = {}
    listening: dict[str, float] = {}
    answered: dict[str, dict[str, float]] = {}
    try:
        t_kill = time.time()
        faults.kill(LAB_DIR, victim)
        deadline = t_kill + 600
        while (len(running) < n or len(answered) < n) and time.time() < deadline:
            for dom in lab.running(victim):
                if dom in domains:
                    running.setdefault(domains[dom], round(time.time() - t_kill, 2))
            for name, path in consoles.items():
                if name not in listening and ssh_lines(path) > before[name]:
                    listening[name] = round(time.time() - t_kill, 2)
            events = read_events(out)
            for fip, name in fips.items():
                if name not in answered:
                    found = recovery(events, f"ssh {fip}", t_kill)
                    if found is not None and found["gap_s"] > 0:
                        answered[name] = found
            time.sleep(0.5)
    finally:
        lab.stop(proc, out)
    fip_s = [a["from_kill_s"] for a in answered.values()]
    net_s = [answered[x]["from_kill_s"] - listening[x] for x in answered if x in listening]
    all_running = max(running.values()) if len(running) == n else None
    doc: dict[str, Any] = {
        "n": n, "victim": victim, "interval_s": EVACUATION_INTERVAL,
        "complete": len(running) == n and len(answered) == n,
        "all_running_s": all_running, "fip_answer_s": summary(fip_s),
        "all_answered_s": max(fip_s) if len(fip_s) == n else None,
        "fip_p50_minus_all_running_s": (round(statistics.median(fip_s) - all_running, 2)
                                        if fip_s and all_running is not None else None),
        "ssh_listening_s": summary(list(listening.values())),
        "fip_minus_listening_s": summary(net_s),
        "per_guest": {name: {"running_s": running.get(name),
                             "listening_s": listening.get(name),
                             "fip_s": answered.get(name, {}).get("from_kill_s")}
                      for name in guests}}
    log(f"evacuation N={n}: {json.dumps(doc)}")
    lab.delete_all()
    return doc


def human_evacuation(doc: dict[str, Any]) -> list[str]:
    return [f"evacuation with networking N={doc['n']}: power loss to the first SSH answer at "
            f"each floating IP p50 {seconds(doc['fip_answer_s']['p50'])} (last "
            f"{seconds(doc['all_answered_s'])}) vs every domain running "
            f"{seconds(doc['all_running_s'])}; p50 - all running "
            f"{seconds(doc['fip_p50_minus_all_running_s'])} (goal <= 3 s); of which the "
            f"guest's own boot to dropbear listening (console) p50 "
            f"{seconds(doc['ssh_listening_s']['p50'])}, listening to answering at the "
            f"floating IP p50 {seconds(doc['fip_minus_listening_s']['p50'])}"
            f"{'' if doc['complete'] else ' (INCOMPLETE)'}"]


def ssh_lines(console: Path) -> int:
    """How many times the guest's console said dropbear listens (once a boot)."""
    try:
        return console.read_text(errors="replace").count("HAVEN-TINY-SSH ")
    except FileNotFoundError:
        return 0


# ---- main -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    for flag in ("reachable", "failover", "evacuation", "metadata"):
        parser.add_argument(f"--{flag}", action="store_true")
    parser.add_argument("--reach-sizes", type=parse_sizes, default=parse_sizes("1,10"))
    parser.add_argument("--runs", type=int, default=3, help="failover runs (2 kills each)")
    parser.add_argument("--evac-n", type=int, default=20)
    parser.add_argument("--md-guests", type=int, default=4)
    parser.add_argument("--md-clients", type=int, default=5)
    parser.add_argument("--md-seconds", type=int, default=20)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    if not (args.reachable or args.failover or args.evacuation or args.metadata):
        args.reachable = args.failover = args.evacuation = args.metadata = True
    if min(args.runs, args.evac_n, args.md_guests, args.md_clients, args.md_seconds) < 1:
        parser.error("--runs, --evac-n, --md-*: at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if lifecycle.busy_reason(LAB_DIR):
        print(f"a lab is up at {LAB_DIR}: run `haven lab down` first", file=sys.stderr)
        return 2
    ensure_tiny(TINY.parent)
    work = Path(tempfile.mkdtemp(prefix="haven-guest-network-"))
    doc: dict[str, Any] = {"benchmark": "guest_network"}
    lines: list[str] = []
    try:
        t0 = time.monotonic()
        lifecycle.up(LAB_DIR, len(NODES), with_libvirt=True)
        stack.up_stack(LAB_DIR, networking=True)
        log(f"lab and stack with networking up in {time.monotonic() - t0:.0f} s")
        lab = NetBench(LAB_DIR, work)
        lab.wait_stack(NODES, 300)
        lab.setup()
        steps = [("reachable", args.reachable,
                  lambda: bench_reachable(lab, args.reach_sizes), human_reachable),
                 ("metadata", args.metadata,
                  lambda: bench_metadata(lab, args.md_guests, args.md_clients,
                                         args.md_seconds), human_metadata),
                 ("failover", args.failover, lambda: bench_failover(lab, args.runs),
                  human_failover),
                 ("evacuation", args.evacuation, lambda: bench_evacuation(lab, args.evac_n),
                  human_evacuation)]
        for key, chosen, run, human in steps:
            if chosen:
                try:
                    doc[key] = run()
                    lines += human(doc[key])
                except Exception as exc:  # the other figures still run
                    log(f"{key}: the bench failed: {exc}")
                    doc[key] = {"error": str(exc)}
                    lines.append(f"{key}: FAILED: {exc}")
    finally:
        if args.keep_logs:
            log(f"the lab's logs: {keep_logs(LAB_DIR)}")
        lifecycle.down(LAB_DIR)
    print(json.dumps(doc, indent=2))
    print("\n".join(lines))
    return 1 if any("error" in v for v in doc.values() if isinstance(v, dict)) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Scheduler benchmark: placement decisions per second over a simulated fleet.

The fleet (``--hosts``, default 1,000) is what a real region looks like to the
scheduler: three host sizes (most medium, some small, a few large), a few hosts
disabled, down or reserved for evacuation, and some already partly used. The
requests mix five flavors; a share of them (``--anti-affinity``) belong to
anti-affinity groups of 2 to 10 members, whose earlier members' hosts are
avoided. Both runs use the real code (core.compute.scheduler):

* memory: ``HostIndex.select`` + ``HostIndex.consume`` (the decision, and the
  claim accounted in memory): the cost an API process pays per boot on top of
  the database. Goal: >= 2,000 decisions/s (issue: scheduler throughput).
* sqlite: the same decision plus the real ``claim()`` (the generation-checked
  UPDATE) and the instance's placement, one committed transaction each, on a
  SQLite file migrated with the real migrations: an all-in-one's real ceiling.
  Also timed: one ``load_index()`` of the whole fleet from the database (each
  API process does it at most once a second, and again before "no valid host").

Requests run until ``--decisions`` are made, taking the fleet from its start
(7 % of RAM used) to the utilisation printed (~73 % with the defaults, so
no request fails: a "no valid host" decision walks every host, ~0.3 ms over
1,000, and would measure the failure path instead). Prints one JSON document
and one human line per run; ``--profile`` adds a cProfile of the memory run.
Usage: python tests/bench/scheduler.py [--hosts 1000] [--decisions 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.compute.scheduler import HostIndex, HostState, Request  # noqa: E402

GOAL = 2000.0  # decisions/s, in memory
# (vcpus, memory_mb, disk_gb, share of requests): m1.tiny .. m1.xlarge
FLAVORS = ((1, 512, 1, 0.25), (1, 2048, 20, 0.30), (2, 4096, 40, 0.25), (4, 8192, 80, 0.15),
           (8, 16384, 160, 0.05))
# (vcpus, memory_mb, disk_gb, share of hosts)
SIZES = ((16, 65536, 1000, 0.25), (32, 131072, 2000, 0.65), (64, 262144, 4000, 0.10))


@dataclass(frozen=True)
class Workload:
    hosts: list[HostState]
    requests: list[tuple[Request, str | None]]  # request, anti-affinity group or None


def weighted(rng: random.Random, table: tuple[tuple[int, int, int, float], ...]
             ) -> tuple[int, int, int]:
    vcpus, mem, disk, _ = rng.choices(table, weights=[t[3] for t in table])[0]
    return vcpus, mem, disk


def make_workload(n_hosts: int, n_requests: int, anti_affinity: float, seed: int) -> Workload:
    """The fleet and the request stream, both from one seed (every run is the same)."""
    rng = random.Random(seed)
    hosts = []
    for i in range(n_hosts):
        vcpus, mem, disk = weighted(rng, SIZES)
        roll = rng.random()
        used = rng.random() < 0.3  # some hosts already run instances
        hosts.append(HostState(
            host=f"compute-{i:04d}", enabled=roll >= 0.03, up=not 0.03 <= roll < 0.06,
            reserved=0.06 <= roll < 0.08, vcpus=vcpus, memory_mb=mem, disk_gb=disk,
            vcpus_used=rng.randrange(vcpus * 2) if used else 0,
            memory_mb_used=rng.randrange(0, mem // 2, 512) if used else 0,
            disk_gb_used=rng.randrange(disk // 2) if used else 0,
            cpu_ratio=4.0, ram_ratio=1.0, reserved_memory_mb=2048))
    requests: list[tuple[Request, str | None]] = []
    open_groups: list[tuple[str, int]] = []  # (group, members still to place)
    n_groups = 0
    for _ in range(n_requests):
        vcpus, mem, disk = weighted(rng, FLAVORS)
        group = None
        if rng.random() < anti_affinity:
            if not open_groups or rng.random() < 0.2:
                n_groups += 1
                open_groups.append((f"group-{n_groups}", rng.randint(2, 10)))
            k = rng.randrange(len(open_groups))
            group, left = open_groups[k]
            if left <= 1:
                open_groups.pop(k)
            else:
                open_groups[k] = (group, left - 1)
        requests.append((Request(vcpus, mem, disk), group))
    return Workload(hosts, requests)


def with_group(req: Request, group: str | None, members: dict[str, set[str]]) -> Request:
    """The request as the API builds it: anti-affinity = avoid the members' hosts."""
    if group is None:
        return req
    return Request(req.vcpus, req.memory_mb, req.disk_gb,
                   avoid_hosts=frozenset(members.get(group, ())))


def utilisation(index: HostIndex) -> float:
    hosts = [h for h in index.hosts() if h.schedulable and not h.reserved]
    total = sum(h.memory_mb * h.ram_ratio - h.reserved_memory_mb for h in hosts)
    return sum(h.memory_mb_used for h in hosts) / total


def run_memory(work: Workload) -> dict[str, Any]:
    """select + consume for every request; the index is built outside the timing."""
    index = HostIndex(work.hosts)
    members: dict[str, set[str]] = {}
    placed = failed = 0
    t0 = time.perf_counter()
    for req, group in work.requests:
        r = with_group(req, group, members)
        h = index.select(r)
        if h is None:
            failed += 1
            continue
        index.consume(h.host, r)
        if group is not None:
            members.setdefault(group, set()).add(h.host)
        placed += 1
    elapsed = time.perf_counter() - t0
    t1 = time.perf_counter()
    HostIndex(work.hosts)
    build_ms = (time.perf_counter() - t1) * 1000
    return {"decisions": placed + failed, "placed": placed, "no_valid_host": failed,
            "seconds": round(elapsed, 3), "per_s": round((placed + failed) / elapsed, 1),
            "us_per_decision": round(elapsed / (placed + failed) * 1e6, 1),
            "index_build_ms": round(build_ms, 1),
            "ram_utilisation_after": round(utilisation(index), 3)}


def sqlite_db(workdir: Path, work: Workload) -> Any:
    """A migrated SQLite file holding the fleet and one BUILD instance per request."""
    from core.common import migrate
    from core.common.db import Database
    from core.compute.models import ComputeService, Instance
    from ha.extensions import HA_SCHEMAS

    db = Database(f"sqlite:///{workdir / 'haven.db'}", pool_size=2, max_retries=5)
    migrate.upgrade(db, HA_SCHEMAS)
    ts = time.time()
    with db.session() as s:
        for h in work.hosts:
            s.add(ComputeService(
                host=h.host, enabled=h.enabled, forced_down=not h.up, reserved=h.reserved,
                last_seen=ts, vcpus=h.vcpus, memory_mb=h.memory_mb, disk_gb=h.disk_gb,
                vcpus_used=h.vcpus_used, memory_mb_used=h.memory_mb_used,
                disk_gb_used=h.disk_gb_used, cpu_ratio=h.cpu_ratio, ram_ratio=h.ram_ratio,
                reserved_memory_mb=h.reserved_memory_mb))
        for i, (req, group) in enumerate(work.requests):
            s.add(Instance(id=f"00000000-0000-0000-0000-{i:012d}", name=f"vm-{i}",
                           project_id="p", user_id="u", flavor_id="f", vcpus=req.vcpus,
                           memory_mb=req.memory_mb, root_gb=req.disk_gb, image_id="i",
                           server_group_id=group, vm_state="building",
                           task_state="scheduling", deleted=False, created_at=ts,
                           updated_at=ts))
    return db


def run_sqlite(work: Workload, workdir: Path) -> dict[str, Any]:
    """Per request, one transaction: read the instance, decide, claim() (retrying the
    next candidate if the UPDATE matches nothing), mark it spawning, commit."""
    from sqlalchemy import func, select

    from core.compute import scheduler
    from core.compute.models import ComputeService, Instance

    db = sqlite_db(workdir, work)
    with db.session() as s:
        index = scheduler.load_index(s, service_down_time=3600)
    t_load = time.perf_counter()
    with db.session() as s:  # what every API process pays at most once a second
        scheduler.load_index(s, service_down_time=3600)
    load_ms = (time.perf_counter() - t_load) * 1000
    members: dict[str, set[str]] = {}
    placed = failed = lost = 0
    t0 = time.perf_counter()
    for i, (req, group) in enumerate(work.requests):
        r = with_group(req, group, members)

        def unit(s: Any, iid: str = f"00000000-0000-0000-0000-{i:012d}",
                 r: Request = r) -> str | None:
            nonlocal lost
            inst = s.get(Instance, iid)
            for h in index.candidates(r):
                if scheduler.claim(s, inst, h, r):
                    index.consume(h.host, r)
                    inst.task_state = "spawning"
                    return str(h.host)
                lost += 1
            return None

        chosen = db.run_in_transaction(unit)
        if chosen is None:
            failed += 1
            continue
        if group is not None:
            members.setdefault(group, set()).add(chosen)
        placed += 1
    elapsed = time.perf_counter() - t0
    with db.session() as s:
        in_db = s.scalar(select(func.sum(ComputeService.memory_mb_used)))
    in_index = sum(h.memory_mb_used for h in index.hosts())
    db.dispose()
    if in_db != in_index or lost:
        raise RuntimeError(f"index and database disagree: {in_index} vs {in_db} MB used, "
                           f"{lost} claims lost with a single scheduler")
    return {"decisions": placed + failed, "placed": placed, "no_valid_host": failed,
            "seconds": round(elapsed, 3), "per_s": round((placed + failed) / elapsed, 1),
            "us_per_decision": round(elapsed / (placed + failed) * 1e6, 1),
            "load_index_ms": round(load_ms, 1)}


def profile(work: Workload) -> str:
    """The memory run under cProfile, top functions by own time (where to look first)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.runcall(run_memory, work)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--sqlite-decisions", type=int, default=5000,
                        help="decisions in the SQLite run (each one commits)")
    parser.add_argument("--anti-affinity", type=float, default=0.2,
                        help="share of requests in anti-affinity groups")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of run (a)")
    args = parser.parse_args()

    work = make_workload(args.hosts, args.decisions, args.anti_affinity, args.seed)
    run_memory(make_workload(args.hosts, 2000, args.anti_affinity, args.seed + 1))  # warm up
    memory = run_memory(work)
    memory["goal_per_s"] = GOAL
    memory["met"] = memory["per_s"] >= GOAL
    short = Workload(work.hosts, work.requests[: args.sqlite_decisions])
    with tempfile.TemporaryDirectory(prefix="haven-bench-scheduler-") as tmp:
        sqlite = run_sqlite(short, Path(tmp))
    fleet = {"hosts": len(work.hosts),
             "schedulable": sum(h.schedulable and not h.reserved for h in work.hosts),
             "reserved": sum(h.reserved for h in work.hosts),
             "disabled_or_down": sum(not h.schedulable for h in work.hosts),
             "anti_affinity_share": args.anti_affinity,
             "grouped_requests": sum(g is not None for _, g in work.requests)}
    report = {"benchmark": "scheduler", "fleet": fleet, "seed": args.seed,
              "results": {"memory": memory, "sqlite": sqlite}, "cpus": os.cpu_count(),
              "python": sys.version.split()[0]}
    print(json.dumps(report, indent=2))
    print(f"memory  {memory['per_s']:9.1f} decisions/s ({memory['us_per_decision']} us each, "
          f"{memory['decisions']} over {fleet['hosts']} hosts, RAM "
          f"{memory['ram_utilisation_after']:.0%} used after)  goal >= {GOAL:.0f}/s  "
          f"{'MET' if memory['met'] else 'MISSED'}")
    print(f"sqlite  {sqlite['per_s']:9.1f} decisions/s ({sqlite['us_per_decision']} us each, "
          f"decide + claim UPDATE + commit, {sqlite['decisions']} decisions; reloading "
          f"the index from the database: {sqlite['load_index_ms']} ms)")
    if args.profile:
        print(profile(work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

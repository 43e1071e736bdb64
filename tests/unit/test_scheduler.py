"""The scheduler's two halves: the in-memory HostIndex that decides, and the
generation-checked claim/release that commit (on a real, migrated SQLite file).

The index is checked against a brute-force model (filter every host, sort by the
spreading weight): whatever sequence of put()/consume() it went through, its
answer must be the model's answer. The claim tests show what makes several API
processes safe: a claim names the generation it read and re-checks capacity in
the same UPDATE, so a stale or over-capacity claim writes nothing at all.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.common import migrate
from core.common.db import Database
from core.common.timeutil import now
from core.compute import states
from core.compute.models import ComputeService, Instance
from core.compute.scheduler import (
    FilterStats,
    HostIndex,
    HostState,
    Request,
    claim,
    describe,
    host_passes,
    host_state,
    release,
)
from ha.extensions import HA_SCHEMAS

TINY = Request(vcpus=1, memory_mb=256, disk_gb=1)


def host(name: str, **kw: object) -> HostState:
    """An enabled, up, normal host with 8 vCPUs (x4), 8 GiB and 100 GB unless told."""
    fields: dict[str, object] = {"host": name, "enabled": True, "up": True, "reserved": False,
                                 "vcpus": 8, "memory_mb": 8192, "disk_gb": 100}
    fields.update(kw)
    return HostState(**fields)  # type: ignore[arg-type]


def rejection(h: HostState, req: Request) -> str | None:
    """The reason ``h`` fails ``req``, or None if it passes (and exactly one reason)."""
    stats = FilterStats()
    passed = host_passes(h, req, stats)
    assert passed == (not stats.rejected)
    assert sum(stats.rejected.values()) == (0 if passed else 1)
    return next(iter(stats.rejected), None)


# ---- the filters -------------------------------------------------------------------------
@pytest.mark.parametrize(("state", "req", "reason"), [
    (host("h"), TINY, None),
    (host("h", enabled=False), TINY, "disabled"),
    (host("h", up=False), TINY, "down"),
    # RAM: 8192 * ratio - reserved - used, compared with >= (an exact fit passes)
    (host("h", memory_mb_used=8192 - 256), TINY, None),
    (host("h", memory_mb_used=8192 - 255), TINY, "RAM"),
    (host("h", reserved_memory_mb=512, memory_mb_used=8192 - 512 - 255), TINY, "RAM"),
    (host("h", ram_ratio=1.5, memory_mb_used=8192), TINY, None),
    # vCPU: 8 * cpu_ratio 4.0 = 32 schedulable
    (host("h", vcpus_used=31), TINY, None),
    (host("h", vcpus_used=32), TINY, "vCPU"),
    (host("h", cpu_ratio=1.0, vcpus_used=8), TINY, "vCPU"),
    (host("h", disk_gb_used=99), TINY, None),
    (host("h", disk_gb_used=100), TINY, "disk"),
    (host("h"), replace(TINY, avoid_hosts=frozenset({"h"})), "anti-affinity or excluded"),
    (host("h"), replace(TINY, avoid_hosts=frozenset({"other"})), None),
    (host("h"), replace(TINY, only_hosts=frozenset({"other"})), "affinity or requested host"),
    (host("h"), replace(TINY, only_hosts=frozenset({"h"})), None),
    (host("h"), replace(TINY, only_hosts=frozenset()), "affinity or requested host"),
], ids=lambda v: v if isinstance(v, str | type(None)) else "")
def test_each_filter_rejects_for_its_own_reason(state: HostState, req: Request,
                                                reason: str | None) -> None:
    assert rejection(state, req) == reason


def test_filters_apply_in_the_index_too() -> None:
    """Disabled and down hosts are never offered even when they are the emptiest; RAM,
    vCPU, disk, avoid and only sets are applied to the ones that are."""
    index = HostIndex([
        host("big-disabled", enabled=False, memory_mb=65536, vcpus=64),
        host("big-down", up=False, memory_mb=65536, vcpus=64),
        host("a"), host("b", memory_mb_used=8000), host("c", disk_gb_used=100),
        host("d", vcpus_used=32),
    ])
    assert [h.host for h in index.candidates(TINY)] == ["a"]
    assert [h.host for h in index.candidates(Request(1, 100, 1))] == ["a", "b"]
    assert [h.host for h in index.candidates(
        replace(Request(1, 100, 1), avoid_hosts=frozenset({"a"})))] == ["b"]
    assert [h.host for h in index.candidates(
        replace(Request(1, 100, 1), only_hosts=frozenset({"b", "c"})))] == ["b"]
    assert index.select(Request(1, 8193, 1)) is None


def test_no_valid_host_says_why_even_when_no_host_is_in_the_orders() -> None:
    """Regression: disabled, down and reserved hosts are kept out of the index's orders,
    so they never met the filters and a fleet that was all down was described as
    "no hypervisors are registered"."""
    index = HostIndex([host("off", enabled=False), host("dead", up=False),
                       host("spare", reserved=True), host("full", memory_mb_used=8192)])
    stats = FilterStats()
    assert list(index.candidates(TINY, stats)) == []
    assert describe(stats) == "hosts rejected: 1 RAM, 1 disabled, 1 down, 1 reserved"
    stats = FilterStats()
    assert [h.host for h in index.candidates(replace(TINY, use_reserved=True), stats)] == [
        "spare"]
    assert describe(FilterStats()) == "no hypervisors are registered"


# ---- spreading -------------------------------------------------------------------------
def test_best_host_has_most_free_ram_plus_vcpu() -> None:
    """The weight is free RAM and free vCPUs, each normalised by the largest host,
    so a host that is emptier on one axis can lose to one emptier on both."""
    index = HostIndex([
        host("ram-rich", memory_mb_used=0, vcpus_used=30),    # 1.0 + 2/32
        host("cpu-rich", memory_mb_used=4096, vcpus_used=0),  # 0.5 + 1.0
        host("both-half", memory_mb_used=4096, vcpus_used=16),  # 0.5 + 0.5
    ])
    assert [h.host for h in index.candidates(TINY)] == ["cpu-rich", "ram-rich", "both-half"]


def test_decisions_spread_over_equal_hosts() -> None:
    """Twelve tiny instances on four equal hosts: three each, and never two in a row on
    one host (consume() re-weights the host just used)."""
    index = HostIndex(host(f"h{i}") for i in range(4))
    placed: list[str] = []
    for _ in range(12):
        chosen = index.select(TINY)
        assert chosen is not None
        index.consume(chosen.host, TINY)
        placed.append(chosen.host)
    assert {name: placed.count(name) for name in set(placed)} == {f"h{i}": 3 for i in range(4)}
    assert all(a != b for a, b in itertools.pairwise(placed))
    for i in range(4):
        h = index.get(f"h{i}")
        assert h is not None
        assert (h.vcpus_used, h.memory_mb_used, h.disk_gb_used, h.generation) == (3, 768, 3, 3)


def test_spreading_fills_an_emptier_host_before_returning_to_the_others() -> None:
    index = HostIndex([host("old", memory_mb_used=2048, vcpus_used=8), host("new")])
    chosen = []
    for _ in range(12):
        h = index.select(TINY)
        assert h is not None
        index.consume(h.host, TINY)
        chosen.append(h.host)
    # "old" is 2048 MB and 8 vCPUs behind, 8 tiny instances' worth of weight: "new"
    # takes those 8 (and the tie after them, by name), then they alternate
    assert chosen == ["new"] * 9 + ["old", "new", "old"]


# ---- reserved hosts -----------------------------------------------------------------------
def test_reserved_hosts_are_kept_out_of_normal_placement() -> None:
    index = HostIndex([host("spare", reserved=True, memory_mb=65536), host("normal",
                                                                            memory_mb_used=8192)])
    assert index.select(TINY) is None  # the only host with room is reserved
    evac = replace(TINY, use_reserved=True)
    chosen = index.select(evac)
    assert chosen is not None and chosen.host == "spare"


def test_evacuation_uses_reserved_hosts_first_then_normal_ones() -> None:
    index = HostIndex([host("spare", reserved=True, memory_mb=1024),
                       host("normal", memory_mb=65536)])
    evac = replace(TINY, use_reserved=True)
    assert [h.host for h in index.candidates(evac)] == ["spare", "normal"]
    for _ in range(4):
        chosen = index.select(evac)
        assert chosen is not None and chosen.host == "spare"
        index.consume("spare", evac)
    chosen = index.select(evac)  # the spare is full: fall back to normal hosts
    assert chosen is not None and chosen.host == "normal"


def test_put_moves_a_host_between_orders_and_drops_unschedulable_ones() -> None:
    index = HostIndex([host("a"), host("b", memory_mb_used=1024)])
    index.put(host("a", reserved=True))
    assert [h.host for h in index.candidates(TINY)] == ["b"]
    assert [h.host for h in index.candidates(replace(TINY, use_reserved=True))] == ["a", "b"]
    index.put(host("b", enabled=False))
    assert index.select(TINY) is None
    index.put(host("b"))
    assert [h.host for h in index.candidates(TINY)] == ["b"]
    assert len(index.hosts()) == 2


# ---- the index against a brute-force model ---------------------------------------------
def brute_force(states_: list[HostState], req: Request,
                ever: list[HostState] | None = None) -> list[str]:
    """What the index must answer: every passing host, by the spreading weight computed
    from scratch, ties by name. The scale is the largest host ever put (``ever``,
    default: the current ones): the index never shrinks it when a big host shrinks or
    goes, so neither may the model."""
    scale = states_ + (ever or [])
    max_ram = max([1.0, *(h.memory_mb * h.ram_ratio for h in scale)])
    max_vcpus = max([1.0, *(h.vcpus * h.cpu_ratio for h in scale)])

    def weight(h: HostState) -> float:
        return h.free_ram_mb / max_ram + h.free_vcpus / max_vcpus

    groups = (True, False) if req.use_reserved else (False,)
    out: list[str] = []
    for reserved in groups:
        passing = [h for h in states_ if h.reserved == reserved and host_passes(h, req)]
        out += [h.host for h in sorted(passing, key=lambda h: (-weight(h), h.host))]
    return out


def random_host(rng: random.Random, name: str, growing: bool) -> HostState:
    """A host of one of a few sizes; the largest size only once ``growing`` (a bigger
    host joining the fleet rescales every weight)."""
    vcpus, mem = rng.choice([(8, 16384), (16, 32768), (32, 65536)] +
                            ([(64, 131072)] if growing else []))
    return host(name, vcpus=vcpus, memory_mb=mem, disk_gb=rng.choice([100, 500]),
                enabled=rng.random() > 0.1, up=rng.random() > 0.1,
                reserved=rng.random() < 0.15, reserved_memory_mb=rng.choice([0, 512]),
                memory_mb_used=rng.randrange(0, mem // 2, 256),
                vcpus_used=rng.randrange(0, vcpus * 2))


@pytest.mark.parametrize("seed", range(5))
def test_index_matches_brute_force_after_random_puts_and_consumes(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"h{i:02d}" for i in range(40)]
    ever = [random_host(rng, n, growing=False) for n in names]
    index = HostIndex(ever)
    flavors = [Request(1, 256, 1), Request(2, 2048, 20), Request(4, 8192, 40),
               Request(8, 16384, 80)]
    for step in range(400):
        req = rng.choice(flavors)
        if rng.random() < 0.3:
            req = replace(req, avoid_hosts=frozenset(rng.sample(names, 3)))
        if rng.random() < 0.1:
            req = replace(req, use_reserved=True)
        action = rng.random()
        if action < 0.6:
            chosen = index.select(req)
            expected = brute_force(index.hosts(), req, ever)
            assert (chosen.host if chosen else None) == (expected[0] if expected else None), (
                f"step {step}")
            if chosen is not None:
                index.consume(chosen.host, req)
        elif action < 0.8:  # a host's state reloaded from the database (any change)
            ever.append(random_host(rng, rng.choice(names), growing=step > 200))
            index.put(ever[-1])
        else:  # an instance deleted: its resources come back
            h = index.get(rng.choice(names))
            assert h is not None
            index.put(replace(h, memory_mb_used=max(0, h.memory_mb_used - 2048),
                              vcpus_used=max(0, h.vcpus_used - 2)))
        probe = Request(0, 0, 0, use_reserved=True)
        assert [h.host for h in index.candidates(probe)] == brute_force(
            index.hosts(), probe, ever), f"order diverged at step {step}"


def test_a_bigger_host_rescales_every_weight() -> None:
    """Weights are normalised by the largest host: a host with 16x the vCPUs makes vCPU
    differences between the others 16x smaller, so the RAM-richer one now comes first,
    even though the new host itself is disabled and never offered."""
    ram_rich = host("ram-rich", vcpus=2, cpu_ratio=1.0, memory_mb=8192)   # 1.0 + 2/8
    cpu_rich = host("cpu-rich", vcpus=8, cpu_ratio=1.0, memory_mb=4096)   # 0.5 + 8/8
    index = HostIndex([ram_rich, cpu_rich])
    assert [h.host for h in index.candidates(TINY)] == ["cpu-rich", "ram-rich"]
    index.put(host("huge", enabled=False, vcpus=128, cpu_ratio=1.0, memory_mb=8192))
    # now 1.0 + 2/128 against 0.5 + 8/128
    assert [h.host for h in index.candidates(TINY)] == ["ram-rich", "cpu-rich"]
    assert [h.host for h in index.candidates(TINY)] == brute_force(index.hosts(), TINY)
    index.consume("ram-rich", TINY)  # later puts use the new scale as well
    assert [h.host for h in index.candidates(TINY)] == brute_force(index.hosts(), TINY)


# ---- claim and release on a real database ------------------------------------------------
@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A SQLite file migrated with the real migrations (what the all-in-one runs)."""
    database = Database(f"sqlite:///{tmp_path / 'haven.db'}", pool_size=2, max_retries=3)
    migrate.upgrade(database, HA_SCHEMAS)
    yield database
    database.dispose()


def add_host(db: Database, name: str, **kw: object) -> None:
    """A hypervisor with room for exactly 4 m1.tiny by RAM (1024+512-512), 32 vCPUs."""
    values: dict[str, object] = {"host": name, "enabled": True, "forced_down": False,
                                 "reserved": False, "last_seen": now(), "vcpus": 8,
                                 "memory_mb": 1536, "reserved_memory_mb": 512, "disk_gb": 100,
                                 "cpu_ratio": 4.0, "ram_ratio": 1.0}
    values.update(kw)
    with db.session() as s:
        s.add(ComputeService(**values))


def add_instance(db: Database, req: Request = TINY) -> str:
    ts = now()
    inst = Instance(name="vm", project_id="p", user_id="u", flavor_id="1", vcpus=req.vcpus,
                    memory_mb=req.memory_mb, root_gb=req.disk_gb, image_id="img",
                    vm_state=states.BUILDING, task_state=states.SCHEDULING, deleted=False,
                    created_at=ts, updated_at=ts)
    with db.session() as s:
        s.add(inst)
        s.flush()
        return inst.id


def row(db: Database, name: str) -> tuple[int, int, int, int]:
    """(vcpus_used, memory_mb_used, disk_gb_used, generation) as committed."""
    with db.session() as s:
        cs = s.scalars(select(ComputeService).where(ComputeService.host == name)).one()
        return cs.vcpus_used, cs.memory_mb_used, cs.disk_gb_used, cs.generation


def read_state(db: Database, name: str) -> HostState:
    with db.session() as s:
        cs = s.scalars(select(ComputeService).where(ComputeService.host == name)).one()
        return host_state(cs, service_down_time=60)


def try_claim(db: Database, instance_id: str, h: HostState, req: Request = TINY) -> bool:
    """One claim in its own transaction, as schedule() does."""
    def unit(s: Session) -> bool:
        inst = s.get(Instance, instance_id)
        assert inst is not None
        return claim(s, inst, h, req)

    return db.run_in_transaction(unit)


def placement(db: Database, instance_id: str) -> tuple[str | None, str | None]:
    with db.session() as s:
        inst = s.get(Instance, instance_id)
        assert inst is not None
        return inst.host, inst.claimed_host


def test_claim_takes_resources_and_bumps_the_generation(db: Database) -> None:
    add_host(db, "h1")
    iid = add_instance(db)
    assert try_claim(db, iid, read_state(db, "h1"))
    assert row(db, "h1") == (1, 256, 1, 1)
    assert placement(db, iid) == ("h1", "h1")


def test_a_claim_with_a_stale_generation_fails_and_writes_nothing(db: Database) -> None:
    """Two schedulers read generation 0; the first claim wins, the second names a
    generation that no longer exists and must change neither the host nor its instance."""
    add_host(db, "h1")
    seen_by_both = read_state(db, "h1")
    first, second = add_instance(db), add_instance(db)
    assert try_claim(db, first, seen_by_both)
    assert not try_claim(db, second, seen_by_both)
    assert row(db, "h1") == (1, 256, 1, 1)
    assert placement(db, second) == (None, None)
    assert try_claim(db, second, read_state(db, "h1"))  # fresh state: it fits
    assert row(db, "h1") == (2, 512, 2, 2)


@pytest.mark.parametrize(("kw", "req"), [
    ({"memory_mb_used": 1024 - 255}, TINY),            # RAM: 255 MB left
    ({"vcpus_used": 32}, TINY),                        # vCPU: 8 x 4.0 all used
    ({"disk_gb_used": 100}, TINY),                     # disk
    ({}, Request(1, 1025, 1)),                         # larger than the whole host
    ({"enabled": False}, TINY),                        # disabled after the index read it
    ({"forced_down": True}, TINY),                     # fenced after the index read it
])
def test_a_claim_beyond_capacity_fails_even_with_the_right_generation(
        db: Database, kw: dict[str, object], req: Request) -> None:
    """The UPDATE re-checks capacity itself: an index that believes there is room (here:
    an empty, enabled host) cannot over-commit the database."""
    add_host(db, "h1", **kw)
    before = row(db, "h1")
    believed = replace(read_state(db, "h1"), vcpus_used=0, memory_mb_used=0, disk_gb_used=0,
                       enabled=True)
    assert not try_claim(db, add_instance(db, req), believed, req)
    assert row(db, "h1") == before


def test_claims_fill_a_host_exactly_to_capacity(db: Database) -> None:
    add_host(db, "h1")
    results = []
    for _ in range(5):
        results.append(try_claim(db, add_instance(db), read_state(db, "h1")))
    assert results == [True] * 4 + [False]
    assert row(db, "h1") == (4, 1024, 4, 4)


def test_release_gives_back_once(db: Database) -> None:
    """Release clears claimed_host with a compare-and-swap first, so a repeated or
    concurrent release (an agent retrying after a crash) never frees the resources twice."""
    add_host(db, "h1")
    iid = add_instance(db)
    assert try_claim(db, iid, read_state(db, "h1"))
    with db.session() as s:
        stale_copy = s.get(Instance, iid)  # read while still claimed, detached below
    assert stale_copy is not None and stale_copy.claimed_host == "h1"

    def release_fresh(s: Session) -> None:
        inst = s.get(Instance, iid)
        assert inst is not None
        release(s, inst)

    db.run_in_transaction(release_fresh)
    after_first = row(db, "h1")
    assert after_first == (0, 0, 0, 2)
    assert placement(db, iid) == ("h1", None)  # the host stays recorded; the claim is gone
    db.run_in_transaction(release_fresh)
    assert row(db, "h1") == after_first

    def release_stale(s: Session) -> None:
        release(s, s.merge(stale_copy, load=False))

    db.run_in_transaction(release_stale)
    assert row(db, "h1") == after_first

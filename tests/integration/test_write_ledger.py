"""The write-judging client (tests/lab/writes.py) against the real APIs, with no lab:
its churn of every kind is judged clean, and writes lost behind its back (rows
deleted or changed in the database) are judged lost. This is the proof that the
lab's failover test (tests/lab/test_stack.py), which runs the same client and
judge through the VIP, can see a lost write."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from sqlalchemy import text

from tests.conftest import ADMIN_PASSWORD, Services
from tests.integration.computeapi import Compute
from tests.lab import writes
from tests.lab.ledger import Outcome, Seen, Verdict, Write, judge, outcome, read_ledger

# The churns here stop on what they must have done, never on a time (a loaded CI
# machine is slow); the ceiling only ends a churn that can never get there, and the
# client's read timeout is long, so that nothing here is an unknown outcome.
CEILING_S = 600.0
PATIENT = (5.0, 120.0)
KINDS = ("project", "user", "network", "port", "server", "image")


def every_kind_written(ledger: Path) -> bool:
    """Each kind has an acknowledged create, update and delete in the ledger."""
    done = {(w.kind, w.op) for w in read_ledger(ledger)
            if outcome(w.status) is Outcome.ACKNOWLEDGED}
    return all((k, op) in done for k in KINDS for op in ("create", "update", "delete"))


def run_judge(services: Services, ledger: Path, out: Path) -> Verdict:
    auth_url = f"{services.url('identity')}/v3"
    writes.observe(auth_url, ADMIN_PASSWORD, ledger, out, budget=60)
    seen = json.loads(out.read_text())
    return judge(read_ledger(ledger), [Seen.from_json(s) for s in seen["seen"]],
                 seen["listed_names"])


def kept(history: list[Write], kind: str) -> list[Write]:
    """Acknowledged creates of ``kind`` the client never tried to delete."""
    deleted = {w.id for w in history if w.op == "delete"}
    return [w for w in history if w.kind == kind and w.op == "create" and w.id
            and outcome(w.status) is Outcome.ACKNOWLEDGED and w.id not in deleted
            and not w.name.endswith("-ports")]


def test_the_client_s_writes_of_every_kind_are_judged_and_a_lost_one_is_seen(
        services: Services, compute: Compute, tmp_path: Path) -> None:
    ledger, out = tmp_path / "ledger.jsonl", tmp_path / "seen.json"
    writes.churn(f"{services.url('identity')}/v3", ADMIN_PASSWORD, ledger, CEILING_S,
                 compute.image, "1", until=lambda: every_kind_written(ledger),
                 timeout=PATIENT)
    history = read_ledger(ledger)
    verdict = run_judge(services, ledger, out)
    assert verdict.ok, verdict.lost
    # every kind was created, updated and deleted, and acknowledged
    for kind in KINDS:
        for op in ("create", "update", "delete"):
            assert verdict.acknowledged.get(f"{kind} {op}", 0) > 0, (kind, op, verdict)
    assert not verdict.maybe  # nothing failed here: no unknown outcomes

    # Lose writes behind the client's back, as a failover might: a kept network's
    # row, a kept server's acknowledged metadata, a kept project.
    network = kept(history, "network")[0]
    server = kept(history, "server")[0]
    project = kept(history, "project")[0]

    def tamper(session: object) -> None:
        run = session.execute  # type: ignore[attr-defined]
        run(text("DELETE FROM networks WHERE id = :i"), {"i": network.id})
        run(text("UPDATE instance_metadata SET value = 'stale' WHERE instance_id = :i "
                 "AND `key` = 'w'"), {"i": server.id})
        run(text("DELETE FROM projects WHERE id = :i"), {"i": project.id})
    services.db.run_in_transaction(tamper)
    verdict = run_judge(services, ledger, out)
    assert sorted(v.split(":", 1)[0] + " " + v.split(" ")[3] for v in verdict.lost) == sorted([
        f"LOST CREATE {network.id}", f"LOST UPDATE {server.id}",
        f"LOST CREATE {project.id}"]), verdict.lost


def test_a_404_for_an_object_deleted_behind_the_client_s_back_is_a_lost_write(
        services: Services, compute: Compute, tmp_path: Path) -> None:
    """The case tests/lab/vip_client.py forgave: an acknowledged network vanishes
    (its row deleted as soon as the ledger shows its create), the client's next
    write to it gets a 404, and the judge calls it a lost write."""
    ledger, out = tmp_path / "ledger.jsonl", tmp_path / "seen.json"
    victim: list[str] = []

    def churn_networks() -> list[Write]:
        try:
            history = read_ledger(ledger) if ledger.exists() else []
        except ValueError:  # a line being written
            return []
        return [w for w in history if w.kind == "network" and w.op == "create" and w.id
                and not w.name.endswith("-ports")]

    churned = threading.Event()

    def tamper() -> None:
        while not churned.is_set():
            made = churn_networks()
            if len(made) >= 2:  # the second is deleted by the client in the end
                victim.append(str(made[1].id))
                services.db.run_in_transaction(lambda s: s.execute(
                    text("DELETE FROM networks WHERE id = :i"), {"i": victim[0]}))
                return
            time.sleep(0.002)
    def victim_written() -> bool:
        """The client has written to the victim since deleting it behind its back."""
        return bool(victim) and any(w.id == victim[0] and w.op != "create"
                                    for w in read_ledger(ledger))

    thread = threading.Thread(target=tamper)
    thread.start()
    try:
        writes.churn(f"{services.url('identity')}/v3", ADMIN_PASSWORD, ledger, CEILING_S,
                     compute.image, "1", until=victim_written, timeout=PATIENT)
    finally:
        churned.set()
        thread.join()
    assert victim, "the churn made fewer than two networks"
    after = [w for w in read_ledger(ledger) if w.id == victim[0] and w.op != "create"]
    assert after and after[0].status == 404, after  # the client's next write found nothing
    verdict = run_judge(services, ledger, out)
    assert [v.split(" (")[0] for v in verdict.lost] == [
        f"LOST WRITE: network {victim[0]}"], verdict.lost

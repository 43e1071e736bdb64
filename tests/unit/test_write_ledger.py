"""The write ledger's judge (tests/lab/ledger.py), rule by rule, on made-up histories:
the lab (tests/lab/test_stack.py) and the integration test
(tests/integration/test_write_ledger.py) feed it real ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.ledger import Outcome, Seen, Verdict, Write, judge, outcome, read_ledger


class History:
    """Writes in order, numbered as the client numbers them."""

    def __init__(self) -> None:
        self.writes: list[Write] = []

    def add(self, op: str, status: int, ident: str | None = "n1", value: str | None = None,
            kind: str = "network", name: str = "net-1") -> History:
        values = {"description": value} if value is not None else {}
        self.writes.append(Write(seq=len(self.writes), kind=kind, op=op, name=name,
                                 status=status, id=ident, values=values))
        return self


def present(value: str | None = None, ident: str = "n1", listed: bool = True) -> Seen:
    return Seen(kind="network", id=ident, found=True, listed=listed,
                values={"description": value} if value is not None else {})


def gone(ident: str = "n1") -> Seen:
    return Seen(kind="network", id=ident, found=False, listed=False)


def lost(verdict: Verdict) -> list[str]:
    return [v.split(":", 1)[0] for v in verdict.lost]


@pytest.mark.parametrize(("status", "expected"), [
    (200, Outcome.ACKNOWLEDGED), (201, Outcome.ACKNOWLEDGED), (202, Outcome.ACKNOWLEDGED),
    (204, Outcome.ACKNOWLEDGED), (404, Outcome.ABSENT), (400, Outcome.REFUSED),
    (409, Outcome.REFUSED), (0, Outcome.UNKNOWN), (500, Outcome.UNKNOWN),
    (502, Outcome.UNKNOWN), (503, Outcome.UNKNOWN)])
def test_each_answer_says_what_it_says_about_the_write(status: int, expected: Outcome) -> None:
    assert outcome(status) is expected


def test_a_created_updated_and_deleted_object_and_a_kept_one_pass() -> None:
    h = (History().add("create", 201, value="v0").add("update", 200, value="v1")
         .add("delete", 204)
         .add("create", 201, "n2", "w0", name="net-2").add("update", 200, "n2", "w1",
                                                           name="net-2"))
    verdict = judge(h.writes, [gone(), present("w1", "n2")])
    assert verdict.ok, verdict.lost
    assert verdict.acknowledged == {"network create": 2, "network update": 2,
                                    "network delete": 1}


def test_an_acknowledged_create_missing_at_the_end_is_a_lost_create() -> None:
    h = History().add("create", 201, value="v0")
    assert lost(judge(h.writes, [gone()])) == ["LOST CREATE"]


def test_a_404_on_deleting_an_acknowledged_create_is_a_lost_write() -> None:
    """What tests/lab/vip_client.py forgave: the 404 counted as "deleted"."""
    h = History().add("create", 201, value="v0").add("delete", 404)
    assert lost(judge(h.writes, [gone()])) == ["LOST WRITE"]


def test_a_404_on_updating_an_acknowledged_create_is_a_lost_write() -> None:
    h = History().add("create", 201, value="v0").add("update", 404, value="v1")
    assert "LOST WRITE" in lost(judge(h.writes, [gone()]))


@pytest.mark.parametrize("unknown", [0, 503])
def test_a_404_after_a_delete_whose_outcome_is_unknown_is_fine(unknown: int) -> None:
    h = History().add("create", 201, value="v0").add("delete", unknown).add("delete", 404)
    assert judge(h.writes, [gone()]).ok


def test_a_404_before_the_unknown_delete_is_still_a_lost_write() -> None:
    h = History().add("create", 201, value="v0").add("update", 404, value="v1") \
        .add("delete", 0).add("delete", 404)
    assert lost(judge(h.writes, [gone()])) == ["LOST WRITE"]


def test_a_404_after_an_unknown_update_is_not_forgiven() -> None:
    """Only a delete may have removed the object: an update whose outcome is unknown
    cannot explain a 404."""
    h = History().add("create", 201, value="v0").add("update", 0, value="v1") \
        .add("delete", 404)
    assert lost(judge(h.writes, [gone()])) == ["LOST WRITE"]


def test_after_an_unknown_delete_the_object_may_be_there_or_not() -> None:
    h = History().add("create", 201, value="v0").add("delete", 0)
    assert judge(h.writes, [gone()]).ok
    assert judge(h.writes, [present("v0")]).ok
    # but if it is there, its acknowledged values hold
    assert lost(judge(h.writes, [present("other")])) == ["LOST UPDATE"]


def test_an_acknowledged_delete_of_an_object_still_there_is_a_lost_delete() -> None:
    h = History().add("create", 201, value="v0").add("delete", 204)
    assert lost(judge(h.writes, [present("v0")])) == ["LOST DELETE"]
    assert lost(judge(h.writes, [present("v0", listed=False)])) == ["LOST DELETE"]


def test_a_refused_delete_leaves_the_object_which_must_be_there() -> None:
    h = History().add("create", 201, value="v0").add("delete", 409)
    assert judge(h.writes, [present("v0")]).ok
    assert lost(judge(h.writes, [gone()])) == ["LOST CREATE"]


def test_an_acknowledged_update_not_visible_at_the_end_is_a_lost_update() -> None:
    h = History().add("create", 201, value="v0").add("update", 200, value="v1")
    assert lost(judge(h.writes, [present("v0")])) == ["LOST UPDATE"]
    assert judge(h.writes, [present("v1")]).ok


def test_the_initial_value_of_a_create_is_an_acknowledged_write_too() -> None:
    h = History().add("create", 201, value="v0")
    assert lost(judge(h.writes, [present(None)])) == ["LOST UPDATE"]


def test_an_update_with_an_unknown_outcome_may_or_may_not_have_landed() -> None:
    h = History().add("create", 201, value="v0").add("update", 200, value="v1") \
        .add("update", 0, value="v2")
    assert judge(h.writes, [present("v1")]).ok
    assert judge(h.writes, [present("v2")]).ok
    assert lost(judge(h.writes, [present("v0")])) == ["LOST UPDATE"]


def test_a_refused_update_changes_nothing() -> None:
    h = History().add("create", 201, value="v0").add("update", 400, value="v1")
    assert judge(h.writes, [present("v0")]).ok
    assert lost(judge(h.writes, [present("v1")])) == ["LOST UPDATE"]


def test_found_by_id_but_missing_from_the_list_is_inconsistent() -> None:
    h = History().add("create", 201, value="v0")
    assert lost(judge(h.writes, [present("v0", listed=False)])) == ["INCONSISTENT"]
    listed_only = Seen(kind="network", id="n1", found=False, listed=True)
    assert "INCONSISTENT" in lost(judge(h.writes, [listed_only]))


def test_an_unknown_create_is_a_maybe_never_a_violation() -> None:
    h = History().add("create", 0, None, "v0", name="net-x") \
        .add("create", 503, None, "v1", name="net-y")
    verdict = judge(h.writes, [], {"network": ["net-x"]})
    assert verdict.ok
    assert verdict.maybe == ["network net-x: exists", "network net-y: does not exist"]


def test_an_object_the_client_did_not_look_at_fails_the_judgement() -> None:
    h = History().add("create", 201, value="v0")
    assert lost(judge(h.writes, [])) == ["NOT OBSERVED"]


def test_kinds_are_judged_apart() -> None:
    h = History().add("create", 201, "x", "v0", kind="project", name="p") \
        .add("create", 201, "x", "v0", kind="network", name="n")
    project = Seen(kind="project", id="x", found=True, listed=True,
                   values={"description": "v0"})
    assert lost(judge(h.writes, [project])) == ["NOT OBSERVED"]


def test_the_ledger_reads_back_what_was_written(tmp_path: Path) -> None:
    h = History().add("create", 201, value="v0").add("delete", 0)
    path = tmp_path / "ledger.jsonl"
    path.write_text("".join(w.to_json() + "\n" for w in h.writes))
    assert read_ledger(path) == h.writes
    seen = present("v0")
    assert Seen.from_json(seen.to_json()) == seen

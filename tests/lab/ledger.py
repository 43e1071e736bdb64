"""The ledger of a client's writes and its judge: was any acknowledged write lost?

A client (tests/lab/writes.py) records every write it sends and the answer it
got; at the end it observes every object it ever named (GET by id, and whether
the collection's list holds it). ``judge`` compares the two. It is a pure
function over those records, so each of its rules is unit-tested on its own
(tests/unit/test_write_ledger.py) and the lab only supplies real histories.

An answer is one of four outcomes:

* **acknowledged** (2xx): the write happened, and must be visible at the end;
* **absent** (404): the object is not there;
* **refused** (any other 4xx): the write did not happen;
* **unknown** (no answer, a timeout, a 5xx): it may or may not have happened.

The rules (issue 10, "Acknowledged writes"):

1. An acknowledged create is found at the end, by GET and in the list, unless
   a delete of it was acknowledged (then it is gone from both) or a delete of it
   had an unknown outcome (then either is fine).
2. A 404 for an object whose create was acknowledged (on a delete or an update),
   with no earlier delete of it whose outcome is unknown, is a LOST WRITE: the
   create was forgotten.
3. A field written by an acknowledged create or update holds, at the end, the
   value of the last acknowledged write of it, or the value of a write whose
   outcome is unknown (such a write may land at any time after it was sent).
4. A create with an unknown outcome may or may not exist: it is reported as a
   "maybe", never as a violation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class Outcome(Enum):
    ACKNOWLEDGED = "acknowledged"
    ABSENT = "absent"
    REFUSED = "refused"
    UNKNOWN = "unknown"


def outcome(status: int) -> Outcome:
    """What an HTTP status (0: no answer at all) says about a write."""
    if 200 <= status < 300:
        return Outcome.ACKNOWLEDGED
    if status == 404:
        return Outcome.ABSENT
    if status == 0 or status >= 500:
        return Outcome.UNKNOWN
    return Outcome.REFUSED


@dataclass(frozen=True)
class Write:
    """One write request as the client sent it and the answer it got.

    ``id`` is the object's id (None for a create that got no id back: its object
    is known by ``name`` only). ``values``: the fields the write set (a create's
    initial values, an update's new ones)."""

    seq: int
    kind: str
    op: str  # "create", "update" or "delete"
    name: str
    status: int
    id: str | None = None
    values: Mapping[str, str] = field(default_factory=dict)
    t: float = 0.0  # when the answer came (time.time()), for the report only

    def to_json(self) -> str:
        return json.dumps({"seq": self.seq, "kind": self.kind, "op": self.op,
                           "name": self.name, "status": self.status, "id": self.id,
                           "values": dict(self.values), "t": self.t})

    @classmethod
    def from_json(cls, line: str) -> Write:
        d = json.loads(line)
        return cls(seq=int(d["seq"]), kind=str(d["kind"]), op=str(d["op"]),
                   name=str(d["name"]), status=int(d["status"]), id=d.get("id"),
                   values={str(k): str(v) for k, v in (d.get("values") or {}).items()},
                   t=float(d.get("t") or 0.0))


@dataclass(frozen=True)
class Seen:
    """One object as observed at the end: ``found`` by GET (200; False on 404),
    ``listed`` in its collection's list, and the ``values`` of its judged fields
    (a field missing from the object: absent from ``values``)."""

    kind: str
    id: str
    found: bool
    listed: bool
    values: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "id": self.id, "found": self.found, "listed": self.listed,
                "values": dict(self.values)}

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> Seen:
        values = d.get("values") or {}
        assert isinstance(values, Mapping)
        return cls(kind=str(d["kind"]), id=str(d["id"]), found=bool(d["found"]),
                   listed=bool(d["listed"]), values={str(k): str(v) for k, v in values.items()})


@dataclass
class Verdict:
    """What the judge found: ``lost`` (violations: each one a lost write, or a
    deleted object that came back), ``maybe`` (unknown creates: found or not),
    and counts of acknowledged writes per kind and op, for the report."""

    lost: list[str] = field(default_factory=list)
    maybe: list[str] = field(default_factory=list)
    acknowledged: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.lost

    def summary(self) -> str:
        counts = ", ".join(f"{k} {n}" for k, n in sorted(self.acknowledged.items()))
        return (f"acknowledged: {counts}; unknown creates: {len(self.maybe)}; "
                f"violations: {len(self.lost)}")


def read_ledger(path: Path) -> list[Write]:
    return [Write.from_json(line) for line in path.read_text().splitlines() if line.strip()]


def _allowed_values(history: list[Write], key: str) -> tuple[str | None, set[str]] | None:
    """For ``key``: (the value of the last acknowledged write of it, the values of
    writes of it whose outcome is unknown); None if no acknowledged write set it."""
    last: str | None = None
    acknowledged = False
    unknown: set[str] = set()
    for w in history:
        if key not in w.values:
            continue
        result = outcome(w.status)
        if result is Outcome.ACKNOWLEDGED:
            last, acknowledged = w.values[key], True
        elif result is Outcome.UNKNOWN:
            unknown.add(w.values[key])
    return (last, unknown) if acknowledged else None


def judge(writes: Iterable[Write], seen: Iterable[Seen],
          listed_names: Mapping[str, Iterable[str]] = {}) -> Verdict:
    """Judge a client's writes against what it saw at the end (module docstring:
    the rules). ``listed_names``: per kind, the names its list held at the end
    (how an unknown create, which has no id, is looked for)."""
    verdict = Verdict()
    final = {(s.kind, s.id): s for s in seen}
    by_object: dict[tuple[str, str], list[Write]] = {}
    for w in sorted(writes, key=lambda w: w.seq):
        if outcome(w.status) is Outcome.ACKNOWLEDGED:
            tally = f"{w.kind} {w.op}"
            verdict.acknowledged[tally] = verdict.acknowledged.get(tally, 0) + 1
        if w.op == "create" and w.id is None:
            if outcome(w.status) is Outcome.UNKNOWN:
                there = w.name in set(listed_names.get(w.kind, ()))
                verdict.maybe.append(f"{w.kind} {w.name}: "
                                     f"{'exists' if there else 'does not exist'}")
            continue
        if w.id is None:
            raise ValueError(f"write {w.seq}: a {w.op} names no object")
        by_object.setdefault((w.kind, w.id), []).append(w)

    for (kind, ident), history in by_object.items():
        create = next((w for w in history if w.op == "create"), None)
        what = f"{kind} {ident} ({history[0].name})"
        if create is None or outcome(create.status) is not Outcome.ACKNOWLEDGED:
            continue  # the client writes only to objects whose create it saw acknowledged
        delete_unknown = False  # an earlier delete may have removed it
        deleted = False  # a delete was acknowledged
        forgotten = False  # a 404 no delete explains: reported once, as a LOST WRITE
        for w in history[1:]:
            result = outcome(w.status)
            if result is Outcome.ABSENT and not delete_unknown and not forgotten:
                forgotten = True
                verdict.lost.append(f"LOST WRITE: {what}: acknowledged create, then a 404 "
                                    f"on {w.op} (write {w.seq}) with no delete before it "
                                    "whose outcome is unknown")
            if w.op == "delete":
                delete_unknown = delete_unknown or result is Outcome.UNKNOWN
                deleted = deleted or result is Outcome.ACKNOWLEDGED
        end = final.get((kind, ident))
        if end is None:
            verdict.lost.append(f"NOT OBSERVED: {what}: the client did not look at it at "
                                "the end")
            continue
        if deleted:
            if end.found or end.listed:
                verdict.lost.append(f"LOST DELETE: {what}: delete acknowledged, still "
                                    f"{'found' if end.found else 'listed'} at the end")
            continue
        if end.found != end.listed:
            how = "found by GET but not listed" if end.found else "listed but GET 404"
            verdict.lost.append(f"INCONSISTENT: {what}: {how}")
        if not end.found:
            if not delete_unknown and not forgotten:
                verdict.lost.append(f"LOST CREATE: {what}: acknowledged (write {create.seq}), "
                                    "never acknowledged deleted, not found at the end")
            continue
        keys = {k for w in history for k in w.values}
        for key in sorted(keys):
            allowed = _allowed_values(history, key)
            if allowed is None:
                continue
            last, unknown = allowed
            value = end.values.get(key)
            if value != last and value not in unknown:
                verdict.lost.append(f"LOST UPDATE: {what}: {key} is {value!r} at the end; "
                                    f"the last acknowledged value is {last!r}"
                                    + (f" (or one of the unknown {sorted(unknown)})"
                                       if unknown else ""))
    return verdict

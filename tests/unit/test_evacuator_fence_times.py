"""Fence completion times: every form Pacemaker prints, read exactly; a time that
cannot be read never confirms a fence.

The table holds strings as Pacemaker prints them (lib/common/iso8601.c: 2.1.5's
``crm_time_as_string``, 2.1.6+'s ``time_as_string_common`` with microseconds, and
``ctime()``'s form). The controller tests print the simulated world's fence history
as stonith_admin's XML in such a form and read it back with the real parser, so the
whole path from Pacemaker's text to the evacuation decision is the product's.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import pytest

from ha.evacuator.env import EventState, FenceEvent, FenceResult
from ha.evacuator.fence_history import fence_events, fence_time
from ha.evacuator.sim import history_xml
from tests.unit.test_evacuator_controller import Rig

# 2026-11-29 19:36:57 UTC
INSTANT = calendar.timegm((2026, 11, 29, 19, 36, 57, 0, 0, 0))

READABLE = [
    # Pacemaker <= 2.1.5 (Debian 12): local time, then the offset, or Z at UTC
    ("2026-11-29 19:36:57Z", INSTANT + 0.999),
    ("2026-11-29 20:36:57 +01:00", INSTANT + 0.999),
    ("2026-11-30 01:06:57 +05:30", INSTANT + 0.999),
    ("2026-11-29 15:36:57 -04:00", INSTANT + 0.999),
    ("2026-11-29 16:06:57 -03:30", INSTANT + 0.999),
    ("2026-11-30 08:36:57 +13:00", INSTANT + 0.999),
    # 2.1.6 and later: microseconds
    ("2026-11-29 19:36:57.123456Z", INSTANT + 0.123456),
    ("2026-11-30 01:06:57.123456 +05:30", INSTANT + 0.123456),
    ("2026-11-29 16:06:57.000001 -03:30", INSTANT + 0.000001),
    ("2026-11-29 19:36:57.000000Z", INSTANT),
    # surrounding white space, as an XML attribute may carry it
    ("  2026-11-29 19:36:57Z\n", INSTANT + 0.999),
]

UNREADABLE = [
    "",
    "not a time",
    "<undefined time>",  # crm_time_as_string() of an undefined time
    "2026-11-29 19:36:57",  # no zone: which one?
    "2026-11-29T19:36:57Z",
    "2026-11-29 19:36:57+01:00",
    "2026-11-29 19:36:57 +1:00",
    "2026-11-29 19:36:57 +25:00",
    "2026-11-29 19:36:57 +05:61",
    "2026-02-30 19:36:57Z",
    "2026-11-29 24:00:00Z",
    "2026-11-29 19:36:60Z",
    "2026-11-29 19:36:57.Z",
    "2026-11-29 19:36:57Z trailing",
    "1764445017",
    "Sun Nov 29 19:36:57",
    "Sun Nov 31 19:36:57 2026",
]


@pytest.mark.parametrize(("text", "expected"), READABLE)
def test_every_form_pacemaker_prints_is_read_exactly(text: str, expected: float) -> None:
    assert fence_time(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("text", UNREADABLE)
def test_anything_else_is_unreadable(text: str) -> None:
    assert fence_time(text) is None


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()
    yield set_zone
    monkeypatch.undo()
    time.tzset()


def test_ctime_form_is_local_time_and_the_earlier_reading_when_ambiguous(
        zone: Callable[[str], None]) -> None:
    zone("Asia/Kolkata")
    assert fence_time("Mon Nov 30 01:06:57 2026") == pytest.approx(INSTANT + 0.999)
    assert fence_time("Sun Nov  1 05:30:00 2026") == pytest.approx(
        calendar.timegm((2026, 11, 1, 0, 0, 0, 0, 0, 0)) + 0.999)
    zone("Europe/Berlin")
    assert fence_time("Sun Nov 29 20:36:57 2026") == pytest.approx(INSTANT + 0.999)
    # 02:30 happened twice on 2026-10-25 (CEST, then CET): the earlier one, 00:30Z
    assert fence_time("Sun Oct 25 02:30:00 2026") == pytest.approx(
        calendar.timegm((2026, 10, 25, 0, 30, 0, 0, 0, 0)) + 0.999)
    # 02:30 never happened on 2026-03-29 (clocks went from 02:00 to 03:00)
    assert fence_time("Sun Mar 29 02:30:00 2026") is None


def test_history_entries_with_unreadable_times_are_kept_without_a_time_and_logged() -> None:
    fences = [FenceEvent(10.0, "off", FenceResult.SUCCESS),
              FenceEvent(20.0, "reboot", FenceResult.FAILED),
              FenceEvent(30.0, "off", FenceResult.SUCCESS)]
    texts = {10.0: "1970-01-01 05:30:10 +05:30", 20.0: "garbage", 30.0: "<undefined time>"}
    logged: list[str] = []
    events = fence_events(history_xml("node3", fences, texts.__getitem__), "node3",
                          logged.append)
    assert [(e.at, e.action) for e in events] == [(10.999, "off"), (None, "reboot"),
                                                  (None, "off")]
    assert len(logged) == 2 and all("does not count" in line for line in logged)


# ---- through the controller ---------------------------------------------------------
def printed(offset_minutes: int | None, micro: bool) -> Callable[[float], str]:
    """A virtual time (epoch seconds) as Pacemaker prints it on a node whose UTC offset
    is ``offset_minutes`` (None: Z), with microseconds or not."""
    def text(at: float) -> str:
        tz = timezone(timedelta(minutes=offset_minutes or 0))
        when = datetime.fromtimestamp(at, tz)
        out = when.strftime("%Y-%m-%d %H:%M:%S")
        if micro:
            out += f".{when.microsecond:06d}"
        if not offset_minutes:
            return out + "Z"
        sign = "-" if offset_minutes < 0 else "+"
        return out + f" {sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    return text


FORMS = {"2.1.5 +05:30": printed(330, False), "2.1.5 -04:00": printed(-240, False),
         "2.1.5 Z": printed(None, False), "2.1.6 +05:30": printed(330, True),
         "2.1.6 Z": printed(None, True)}


@pytest.mark.parametrize("form", FORMS)
def test_an_old_fence_printed_in_local_time_does_not_confirm_a_later_outage(form: str) -> None:
    """The host was fenced once, came back, and is now lost again, and this time its
    fence fails: the old fence, printed with the node's offset, is read as old."""
    rig = Rig()
    rig.env.printed_time = FORMS[form]
    node3 = rig.world.hosts["node3"]
    node3.agent_up = False
    rig.world.fence_device("node3", "fail")
    rig.until(3)
    node3.fences.append(FenceEvent(2.0, "reboot", FenceResult.SUCCESS))  # then seen online
    rig.world.set_network("node3", False)
    rig.until(120)
    assert rig.evacuated() == []
    assert rig.event("node3").state is EventState.DETECTED
    assert node3.domains == {"vm1": "running"}
    assert any("NOT evacuating until a fence succeeds" in a for a in rig.alerts())
    rig.ok()


@pytest.mark.parametrize("form", FORMS)
def test_a_new_fence_printed_in_local_time_is_confirmed(form: str) -> None:
    rig = Rig()
    rig.env.printed_time = FORMS[form]
    rig.world.fence_device("node3", "slow", 10)
    rig.tick(4)
    rig.world.power("node3", False)
    rig.until(30)  # lost at 8, fence completes at 18
    event = rig.event("node3")
    assert event.state in (EventState.EVACUATING, EventState.DONE)
    assert event.fenced_at is not None and 18 <= event.fenced_at < 19
    assert rig.evacuated() == [("vm1", "node3", "node1")]
    rig.ok()


@pytest.mark.parametrize("text", ["garbage", "<undefined time>", "1970-01-01 00:00:07",
                                  "1970-01-01 05:30:07+05:30"])
def test_a_fence_with_an_unreadable_time_never_confirms_one(text: str) -> None:
    """A host that is unreachable but runs on; its history holds a successful fence
    after it was last seen alive whose time cannot be read: never evacuated."""
    rig = Rig()
    rig.env.printed_time = lambda at: text if at == 7.0 else printed(330, False)(at)
    node3 = rig.world.hosts["node3"]
    rig.world.fence_device("node3", "fail")
    rig.world.set_network("node3", False)
    rig.until(7)
    node3.fences.append(FenceEvent(7.0, "off", FenceResult.SUCCESS))
    rig.until(150)
    assert rig.evacuated() == []
    assert rig.event("node3").state is EventState.DETECTED
    assert node3.domains == {"vm1": "running"}
    assert any("no usable completion time" in line for line in rig.world.lines)
    rig.ok()


def test_a_fence_completed_ahead_of_the_controllers_clock_does_not_count() -> None:
    """A time read an hour ahead (a zone taken for another) must not pass as a fence of
    the current outage."""
    rig = Rig()
    node3 = rig.world.hosts["node3"]
    rig.world.fence_device("node3", "fail")
    rig.world.set_network("node3", False)
    rig.until(7)
    node3.fences.append(FenceEvent(7.0 + 3600, "off", FenceResult.SUCCESS))
    rig.until(150)
    assert rig.evacuated() == []
    assert rig.event("node3").state is EventState.DETECTED

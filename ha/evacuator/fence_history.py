"""Pacemaker's fence history as the controller reads it: ``stonith_admin --history NODE
--verbose --output-as=xml``, each operation's ``completed`` attribute turned into
epoch seconds.

A fence counts only if it completed after the node was last seen alive, so a
completion time read wrong is a safety defect, not a cosmetic one: an old fence
read as recent lets a node that left the cluster without a new fence (``pcs
cluster stop``, a partition whose fence failed) be evacuated while its guests
still run. So every format Pacemaker prints is parsed exactly, and a time that
cannot be read is ``None``: the operation never confirms a fence (fail closed),
and is never replaced by the current time.

What Pacemaker prints (``completed`` is written by ``stonith_event_xml`` in
lib/fencing/st_output.c, only for operations that are done or failed):

* up to 2.1.5 (Debian 12): ``time_t_string()`` -> ``crm_time_as_string()``
  (lib/common/iso8601.c) with ``crm_time_log_date | crm_time_log_timeofday |
  crm_time_log_with_timezone``: the *local* time, then `` +HH:MM`` / `` -HH:MM``
  (a space, the sign, hours and minutes) when the node's offset is not zero, else
  ``Z``: ``2026-11-29 20:36:57 +01:00``, ``2026-11-29 19:36:57Z``;
* 2.1.6 and later: ``timespec_string(..., show_usec=true)`` ->
  ``pcmk__timespec2str()`` -> ``time_as_string_common()`` with ``crm_time_usecs``
  as well: six digits of microseconds after the seconds, the zone as above:
  ``2026-11-29 20:36:57.123456 +05:30``, ``2026-11-29 15:06:57.123456Z``;
* ``pcmk__epoch2str(..., 0)`` is ``ctime()`` without its newline (``Sun Nov 29
  20:36:57 2026``: local time, no zone). stonith_admin uses it for its text output
  (``--last``), not for ``completed``; it is read as this machine's local time (the
  controller runs stonith_admin itself, in its own zone), taking the earlier
  reading where a clock change makes the text ambiguous and refusing one that a
  clock change skipped.

Times with whole seconds are rounded up to the end of their second: the
controller compares them with the node's last sign of life, taken to the
microsecond, and a fence printed as 19:36:57 may have ended at 19:36:57.9.
Rounding up can only count a fence that ended in the same second the node was
last seen alive, which no real fence can (a node takes far longer than a second
to be declared lost and fenced).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

from ha import crm
from ha.evacuator.env import FenceEvent, FenceResult

# "YYYY-MM-DD HH:MM:SS[.ffffff](Z| +HH:MM| -HH:MM)": crm_time_as_string() and
# time_as_string_common() in lib/common/iso8601.c.
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                  r"(?:(Z)| ([+-])(\d{2}):(\d{2}))")
_ASCTIME = "%a %b %d %H:%M:%S %Y"
_WHOLE_SECOND = 0.999


def fence_time(completed: str) -> float | None:
    """Epoch seconds of a fence history ``completed`` text, or ``None`` if it is not
    one of the forms Pacemaker prints (the module docstring lists them)."""
    text = completed.strip()
    match = _ISO.fullmatch(text)
    if match is not None:
        return _iso_time(match)
    return _asctime(text)


def _iso_time(match: re.Match[str]) -> float | None:
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, utc, sign, off_h, off_m = match.groups()[6:]
    if utc is not None:
        offset = timedelta(0)
    else:
        if int(off_h) > 23 or int(off_m) > 59:
            return None
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        if sign == "-":
            offset = -offset
    try:
        at = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError:  # 2026-02-30, 24:00:00, second 60, ...
        return None
    if fraction is None:
        return at.timestamp() + _WHOLE_SECOND
    return at.timestamp() + int(fraction[:6].ljust(6, "0")) / 1e6


def _asctime(text: str) -> float | None:
    """ctime()'s text, in this machine's zone: the earliest instant it can mean."""
    try:
        fields = time.strptime(" ".join(text.split()), _ASCTIME)
    except ValueError:
        return None
    readings = []
    for dst in (0, 1):
        try:
            at = time.mktime((*fields[:8], dst))
        except (OverflowError, ValueError):
            continue
        if time.localtime(at)[:6] == fields[:6]:  # a real local time, read this way
            readings.append(at)
    return min(readings) + _WHOLE_SECOND if readings else None


def fence_events(xml: str, node: str, log: Callable[[str], None]) -> list[FenceEvent]:
    """``node``'s operations in stonith_admin's XML, oldest first; those whose time
    cannot be read last, with ``at`` None (logged: they never confirm a fence)."""
    events = []
    for ev in crm.parse_fence_history(xml):
        if ev.target != node:
            continue
        if ev.status == "success":
            outcome = FenceResult.SUCCESS
        elif ev.status in ("pending", ""):
            outcome = FenceResult.PENDING
        else:
            outcome = FenceResult.FAILED
        at = fence_time(ev.completed) if ev.completed else None
        if at is None and outcome is not FenceResult.PENDING:
            log(f"fence history of {node}: {ev.action} {ev.status} with unreadable completion "
                f"time {ev.completed!r}; it does not count as a fence")
        events.append(FenceEvent(at=at, action=ev.action, result=outcome))
    return sort_events(events)


def sort_events(events: Sequence[FenceEvent]) -> list[FenceEvent]:
    """Oldest first; operations without a readable time last."""
    return sorted(events, key=lambda e: (e.at is None, e.at or 0.0))

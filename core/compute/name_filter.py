"""The server list's ``name`` filter: Nova's regular-expression search, in linear time.

Nova matches ``?name=`` as a regular expression searched anywhere in the name.
Python's ``re`` backtracks: a pattern such as ``(a+)+$`` against a long name
runs for ages while holding the GIL, which freezes every API of the all-in-one
process. RE2 (google-re2) guarantees time linear in the name's length and
refuses what it cannot do that way (backreferences, lookaround); such a
pattern is a 400 naming the filter, never a slow ``re`` fallback.
"""

from __future__ import annotations

from collections.abc import Callable

import re2

from core.common.faults import BadRequest

MAX_PATTERN = 255  # a server name is at most 255 characters: longer patterns are no use
MAX_MEM = 8 << 20  # bytes RE2 may use for one compiled pattern


def name_matcher(pattern: str) -> Callable[[str], bool]:
    """A predicate telling whether a server name matches ``pattern`` (re.search sense)."""
    if len(pattern) > MAX_PATTERN:
        raise BadRequest(f"Invalid input for query parameter 'name': longer than "
                         f"{MAX_PATTERN} characters.")
    options = re2.Options()
    options.log_errors = False
    options.max_mem = MAX_MEM
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(
            exc.args[0], bytes) else str(exc)
        raise BadRequest(f"Invalid input for query parameter 'name': {pattern!r} is not a "
                         f"regular expression Haven can search with (RE2 syntax: no "
                         f"backreferences or lookaround): {reason}") from None
    return lambda name: compiled.search(name) is not None

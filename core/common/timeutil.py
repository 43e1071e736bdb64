"""Times as stored (float epoch seconds, UTC) and as OpenStack APIs print them."""

from __future__ import annotations

import time


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """``2026-11-25T16:23:26Z`` (Glance/Neutron style); None stays None."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def iso_us(ts: float | None) -> str | None:
    """``2026-11-25T16:23:26.000000`` (Nova style, no zone suffix)."""
    if ts is None:
        return None
    whole = int(ts)
    micro = int((ts - whole) * 1e6)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micro:06d}"

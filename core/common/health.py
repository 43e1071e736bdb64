"""``GET /healthcheck``: what the OCF agents' deep monitor asks every service.

Each check is a name and a callable that raises when its dependency is
unusable. The status is 200 only when all pass, 503 otherwise: a service that
cannot reach its database or bus is not serving, whatever its process table
says.

The details (every check with its outcome, time and error text, which names
internal hosts) go only to callers who may see them: a request from this host
over loopback (the OCF agents' monitor, which asks ``127.0.0.1`` on cluster
nodes) or one with a valid admin token. Anyone else (a load balancer, the
internet) gets the status code and a plain ``OK`` or ``unavailable``.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping
from typing import Any

import bottle

from core.common.auth import AuthContext

Check = Callable[[], None]


def run_checks(checks: Mapping[str, Check | None]) -> tuple[bool, dict[str, Any]]:
    results: dict[str, Any] = {}
    healthy = True
    for name, check in checks.items():
        if check is None:
            results[name] = {"ok": True, "detail": "not used by this service"}
            continue
        started = time.monotonic()
        try:
            check()
            results[name] = {"ok": True}
        except Exception as exc:  # any failure of a dependency is a finding, not a crash
            healthy = False
            results[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:500]}
        results[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    return healthy, results


def from_loopback(environ: Mapping[str, Any]) -> bool:
    """Whether the peer is this host over loopback (127.0.0.0/8, ::1, ::ffff:127.x)."""
    try:
        peer = ipaddress.ip_address(str(environ.get("REMOTE_ADDR", "")).split("%")[0])
    except ValueError:
        return False  # unknown (a Unix socket, a proxy): not trusted
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return peer.is_loopback


def may_see_details(environ: Mapping[str, Any]) -> bool:
    ctx: AuthContext | None = environ.get("haven.auth")
    return from_loopback(environ) or (ctx is not None and ctx.is_admin)


def add_healthcheck(app: bottle.Bottle, service: str, checks: Mapping[str, Check | None]) -> None:
    @app.get("/healthcheck", optional_auth=True)
    def healthcheck() -> dict[str, Any] | str:
        healthy, results = run_checks(checks)
        bottle.response.status = 200 if healthy else 503
        if not may_see_details(bottle.request.environ):
            bottle.response.content_type = "text/plain; charset=utf-8"
            return "OK" if healthy else "unavailable"
        return {"service": service, "status": "ok" if healthy else "failed", "checks": results}

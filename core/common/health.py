"""``GET /healthcheck``: what the OCF agents' deep monitor asks every service.

Each check is a name and a callable that raises when its dependency is
unusable. The answer lists every check with its outcome and time, and the
status is 200 only when all pass, 503 otherwise: a service that cannot reach its
database or bus is not serving, whatever its process table says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import bottle

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


def add_healthcheck(app: bottle.Bottle, service: str, checks: Mapping[str, Check | None]) -> None:
    @app.get("/healthcheck", skip_auth=True)
    def healthcheck() -> dict[str, Any]:
        healthy, results = run_checks(checks)
        bottle.response.status = 200 if healthy else 503
        return {"service": service, "status": "ok" if healthy else "failed", "checks": results}

"""The compute API (Nova v2.1 subset): app factory, version discovery, microversions.

Microversions: a request may ask for ``OpenStack-API-Version: compute 2.X`` (or
the legacy ``X-OpenStack-Nova-API-Version``) between MIN and MAX; the answer
echoes the version used. Haven implements the 2.1 wire format plus the fields
and calls added up to MAX_VERSION (locked, description, host_status, forced-down
of services in 2.11). A version above MAX is refused with 406, as Nova does.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import bottle
from sqlalchemy.orm import Session

from core.common import policy
from core.common.auth import TokenValidator
from core.common.bus import Bus
from core.common.clients import ServiceClients
from core.common.config import HavenConfig
from core.common.db import Database
from core.common.extensions import ComputeApiExtension
from core.common.faults import BadRequest, Fault
from core.common.health import add_healthcheck
from core.common.tokens import KeyRepository, TokenCodec
from core.common.wsgi import base_url, make_app
from core.compute import scheduler
from core.compute.quotas import make_quotas

MIN_VERSION = (2, 1)
MAX_VERSION = (2, 25)
VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")


def _text(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def parse_microversion() -> None:
    """Read the requested microversion into the environ, or refuse it (400/406)."""
    environ = bottle.request.environ
    header = bottle.request.get_header("OpenStack-API-Version", "")
    requested = None
    for part in header.split(","):
        service, _, value = part.strip().partition(" ")
        if service.lower() == "compute" and value:
            requested = value.strip()
    requested = requested or bottle.request.get_header("X-OpenStack-Nova-API-Version")
    version = MIN_VERSION
    if requested:
        if requested == "latest":
            version = MAX_VERSION
        else:
            match = VERSION_RE.match(requested)
            if not match:
                raise BadRequest(f"Version {requested} is not a valid microversion.")
            version = (int(match[1]), int(match[2]))
            if version < MIN_VERSION or version > MAX_VERSION:
                raise Fault(f"Version {requested} is not supported by the API. Minimum is "
                            f"{_text(MIN_VERSION)} and maximum is {_text(MAX_VERSION)}.", 406)
    environ["haven.microversion"] = version


def microversion() -> tuple[int, int]:
    version: tuple[int, int] = bottle.request.environ.get("haven.microversion", MIN_VERSION)
    return version


def _version_entry(base: str) -> dict[str, Any]:
    return {"id": "v2.1", "status": "CURRENT", "version": _text(MAX_VERSION),
            "min_version": _text(MIN_VERSION), "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{base}/v2.1/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.compute+json;version=2.1"}]}


@dataclass
class ComputeContext:
    """What the compute routes share: config, database, bus, clients, scheduler state."""

    cfg: HavenConfig
    db: Database
    bus: Bus
    clients: ServiceClients

    def __post_init__(self) -> None:
        self._index: scheduler.HostIndex | None = None
        self._index_at = 0.0
        self._index_lock = threading.Lock()
        self.quotas = make_quotas(self.cfg.quota)

    def host_index(self, session: Session, max_age: float = 1.0) -> scheduler.HostIndex:
        """The scheduler's view of the hosts, reloaded at most every ``max_age`` seconds.

        Staleness is safe: claims re-check the database, and a failed claim
        refreshes the host it failed on.
        """
        with self._index_lock:
            if self._index is None or time.monotonic() - self._index_at > max_age:
                self._index = scheduler.load_index(session, self.cfg.compute.service_down_time)
                self._index_at = time.monotonic()
            return self._index

    def service_up(self, last_seen: float, forced_down: bool) -> bool:
        return scheduler.is_up(last_seen, forced_down, self.cfg.compute.service_down_time)


def create_app(cfg: HavenConfig, db: Database, bus: Bus,
               clients: ServiceClients | None = None,
               extensions: Sequence[ComputeApiExtension] = ()) -> bottle.Bottle:
    """The compute API app; each of ``extensions`` then mounts its own routes on it
    (a deployment's additions: core.common.extensions)."""
    from core.compute import admin_routes, keypairs, policies, quotas, servers

    policy.register(policies.RULES)
    validator = TokenValidator(TokenCodec(KeyRepository(cfg.fernet_key_dir,
                                                        cfg.identity.max_active_keys)))
    app = make_app(db, validator, style="nova", prepare=parse_microversion)
    ctx = ComputeContext(cfg, db, bus, clients or ServiceClients(cfg))
    add_healthcheck(app, "compute-api", {"database": db.ping, "bus": bus.ping})

    @app.hook("after_request")
    def _echo_version() -> None:
        version = _text(microversion())
        bottle.response.set_header("OpenStack-API-Version", f"compute {version}")
        bottle.response.set_header("X-OpenStack-Nova-API-Version", version)
        bottle.response.set_header("Vary", "OpenStack-API-Version, X-OpenStack-Nova-API-Version")
        rid = bottle.request.environ.get("haven.request_id")
        if rid:
            bottle.response.set_header("x-compute-request-id", rid)

    @app.get("/", skip_auth=True)
    def versions() -> dict[str, Any]:
        return {"versions": [_version_entry(base_url())]}

    @app.get("/v2.1", skip_auth=True)
    @app.get("/v2.1/", skip_auth=True)
    def version() -> dict[str, Any]:
        return {"version": _version_entry(base_url())}

    servers.register(app, ctx)
    admin_routes.register(app, ctx)
    quotas.register(app, ctx.quotas)
    keypairs.register(app, ctx.quotas)
    for extend in extensions:
        extend(app, cfg)
    return app

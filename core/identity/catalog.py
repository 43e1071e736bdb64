"""The service catalog: defined by configuration, stored by bootstrap, served in tokens.

Every controller has the same configuration file, so the catalog is a pure
function of it; bootstrap writes it into the database (idempotently) so that
``/v3/services`` and ``/v3/endpoints`` list it and every node serves the same
catalog in its tokens.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.common.config import HavenConfig
from core.identity.models import Endpoint, Region, Service

INTERFACES = ("public", "internal", "admin")


@dataclass(frozen=True)
class CatalogService:
    type: str
    name: str
    listen: str
    path: str


def configured_services(cfg: HavenConfig) -> list[CatalogService]:
    """The services this Haven runs, with where they listen."""
    return [
        CatalogService("identity", "keystone", cfg.identity.listen, "/v3"),
        CatalogService("compute", "nova", cfg.compute.listen, "/v2.1"),
        CatalogService("image", "glance", cfg.image.listen, ""),
        CatalogService("network", "neutron", cfg.network.listen, ""),
    ]


def endpoint_urls(cfg: HavenConfig, svc: CatalogService) -> dict[str, str]:
    host, _, port = svc.listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    public = cfg.catalog.public_host or host
    internal = cfg.catalog.internal_host or public
    admin = cfg.catalog.admin_host or internal
    hosts = {"public": public, "internal": internal, "admin": admin}
    scheme = cfg.tls.scheme  # a node that serves https lists https endpoints
    return {iface: f"{scheme}://{h}:{port}{svc.path}" for iface, h in hosts.items()}


def sync_catalog(session: Session, cfg: HavenConfig) -> None:
    """Make the stored catalog match the configuration (safe to run on every start)."""
    region_id = cfg.catalog.region
    if session.get(Region, region_id) is None:
        session.add(Region(id=region_id, description=""))
        session.flush()
    for svc in configured_services(cfg):
        row = session.scalars(select(Service).where(Service.type == svc.type)).first()
        if row is None:
            row = Service(type=svc.type, name=svc.name, description="", enabled=True)
            session.add(row)
            session.flush()
        row.name = svc.name
        for interface, url in endpoint_urls(cfg, svc).items():
            ep = session.scalars(
                select(Endpoint).where(
                    Endpoint.service_id == row.id,
                    Endpoint.interface == interface,
                    Endpoint.region_id == region_id,
                )
            ).first()
            if ep is None:
                session.add(Endpoint(service_id=row.id, interface=interface,
                                     region_id=region_id, url=url, enabled=True))
            else:
                ep.url = url


class CatalogCache:
    """The token catalog, read from the database at most every ``ttl`` seconds.

    The catalog changes only when an operator changes configuration and
    restarts; a few seconds of staleness cost nothing, a query per token would.
    """

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value: list[dict[str, Any]] | None = None
        self._at = 0.0

    def get(self, session: Session) -> list[dict[str, Any]]:
        now = time.monotonic()
        if self._value is not None and now - self._at < self.ttl:
            return self._value
        services = session.scalars(select(Service).where(Service.enabled.is_(True))).all()
        endpoints = session.scalars(select(Endpoint).where(Endpoint.enabled.is_(True))).all()
        value = []
        for svc in services:
            value.append({
                "id": svc.id,
                "type": svc.type,
                "name": svc.name,
                "endpoints": [
                    {"id": e.id, "interface": e.interface, "region": e.region_id,
                     "region_id": e.region_id, "url": e.url}
                    for e in endpoints if e.service_id == svc.id
                ],
            })
        with self._lock:
            self._value, self._at = value, now
        return value

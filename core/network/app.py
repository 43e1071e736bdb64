"""The network service's app factory (Neutron v2.0 subset).

One module per resource: :mod:`core.network.networks`, :mod:`core.network.subnets`,
:mod:`core.network.ports`; what they share (the caller, visibility, paging) is
:mod:`core.network.access`'s, their JSON :mod:`core.network.views`'s. Ports carry
their fixed IPs from IPAM (:mod:`core.network.ipam`), so every server shows an
address in ``addresses``.
"""

from __future__ import annotations

from typing import Any

import bottle

from core.common import policy
from core.common.auth import TokenValidator
from core.common.config import HavenConfig
from core.common.db import Database
from core.common.faults import NotFound
from core.common.health import add_healthcheck
from core.common.tokens import KeyRepository, TokenCodec
from core.common.wsgi import base_url, make_app
from core.network import (
    agent_nudges,
    floating_ips,
    l3_extensions,
    networks,
    ports,
    routers,
    security_group_rules,
    security_groups,
    segments,
    subnets,
)
from core.network import quotas as network_quotas
from core.network.policies import RULES

# Neutron's API extensions Haven implements, as clients look them up by alias before
# they use a feature; only what Haven honours is listed.
EXTENSIONS: list[dict[str, Any]] = [
    *l3_extensions.EXTENSIONS,
    l3_extensions.extension("security-group", "security-group",
                            "The security groups extension."),
    l3_extensions.extension("port-security", "Port Security",
                            "Provides port security."),
]
RESOURCES = ("network", "subnet", "port", "security-group", "security-group-rule", "router",
             "floatingip")


def create_app(cfg: HavenConfig, db: Database,
               nudger: agent_nudges.Nudger | None = None) -> bottle.Bottle:
    """A fresh network API bound to ``db`` and the configured quotas. ``nudger`` (on
    the cloud's bus) wakes the network agents after a change (None: they find it at
    their next round)."""
    validator = TokenValidator(TokenCodec(KeyRepository(cfg.fernet_key_dir,
                                                        cfg.identity.max_active_keys)))
    nudger = nudger or agent_nudges.Nudger(None)
    app = make_app(db, validator, style="neutron", prepare=nudger.prepare)
    # the bus only speeds the agents up: the API serves without it (no health check)
    add_healthcheck(app, "network", {"database": db.ping, "bus": None})
    quotas = network_quotas.make_quotas(cfg.quota)
    network_quotas.register(app, quotas)

    policy.register(RULES)
    register_version_routes(app)
    networks.register(app, quotas, cfg.api, segments.parse(cfg.network.segments))
    subnets.register(app, cfg.api)
    ports.register(app, quotas, cfg.api)
    security_groups.register(app, quotas, cfg.api)
    security_group_rules.register(app, quotas, cfg.api)
    routers.register(app, quotas, cfg.api)
    floating_ips.register(app, quotas, cfg.api)
    return app


def register_version_routes(app: bottle.Bottle) -> None:
    @app.get("/", skip_auth=True)
    def versions() -> dict[str, Any]:
        return {"versions": [{"id": "v2.0", "status": "CURRENT",
                              "links": [{"rel": "self", "href": f"{base_url()}/v2.0/"}]}]}

    @app.get("/v2.0")
    @app.get("/v2.0/")
    def resources() -> dict[str, Any]:
        return {"resources": [{"name": n, "collection": f"{n}s", "links": []}
                              for n in RESOURCES]}

    @app.get("/v2.0/extensions")
    def extensions() -> dict[str, Any]:
        return {"extensions": list(EXTENSIONS)}

    @app.get("/v2.0/extensions/<alias>")
    def extension(alias: str) -> dict[str, Any]:
        for ext in EXTENSIONS:
            if ext["alias"] == alias:
                return {"extension": ext}
        raise NotFound(f"Extension with alias {alias} does not exist")

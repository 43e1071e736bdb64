"""The identity service's app factory."""

from __future__ import annotations

import time

import bottle

from core.common import policy
from core.common.auth import TokenValidator
from core.common.config import HavenConfig
from core.common.db import Database
from core.common.health import add_healthcheck
from core.common.tokens import KeyRepository, TokenCodec
from core.common.wsgi import make_app
from core.identity import auth_routes, resources
from core.identity.lockout import Clock, Lockout, LockoutRules
from core.identity.policies import RULES
from core.identity.tokens import TokenService


def create_app(cfg: HavenConfig, db: Database, clock: Clock = time.time) -> bottle.Bottle:
    """A fresh identity API bound to ``db`` and the configured Fernet keys.

    ``clock`` is what the password lockout reads the time from (tests move it).
    """
    policy.register(RULES)
    keys = KeyRepository(cfg.fernet_key_dir, cfg.identity.max_active_keys)
    codec = TokenCodec(keys)
    validator = TokenValidator(codec)
    lockout = Lockout(db, LockoutRules.from_config(cfg), clock)
    tokens = TokenService(codec, validator, cfg.identity.token_expiration, lockout)
    app = make_app(db, validator, style="keystone")

    def fernet_keys() -> None:
        keys.fernet()

    add_healthcheck(app, "identity", {"database": db.ping, "bus": None,
                                      "fernet_keys": fernet_keys})
    auth_routes.register(app, tokens)
    resources.register_domains(app)
    resources.register_projects(app)
    resources.register_users(app, cfg.identity.bcrypt_cost, lockout)
    resources.register_roles(app)
    resources.register_grants(app)
    resources.register_catalog(app)
    return app

"""The image service's app factory (Glance v2 subset).

One module per resource: :mod:`core.image.images` (records), :mod:`core.image.tags`,
:mod:`core.image.data` (upload and download); the data's directory is
:mod:`core.image.store`'s.
"""

from __future__ import annotations

import os
from typing import Any

import bottle

from core.common import policy
from core.common.auth import TokenValidator
from core.common.config import HavenConfig
from core.common.db import Database
from core.common.health import add_healthcheck
from core.common.tokens import KeyRepository, TokenCodec
from core.common.wsgi import base_url, make_app
from core.image import data, images, tags
from core.image import quotas as image_quotas
from core.image.policies import RULES
from core.image.store import ImageStore


def create_app(cfg: HavenConfig, db: Database) -> bottle.Bottle:
    """A fresh image API bound to ``db``, the configured store and quotas."""
    policy.register(RULES)
    validator = TokenValidator(TokenCodec(KeyRepository(cfg.fernet_key_dir,
                                                        cfg.identity.max_active_keys)))
    store = ImageStore(cfg.image_store_path)
    max_bytes = cfg.image.max_image_size_gb << 30
    quotas = image_quotas.make_quotas(cfg.quota)
    app = make_app(db, validator, style="nova")

    def store_writable() -> None:
        if not os.access(store.directory, os.W_OK):
            raise OSError(f"image store {store.directory} is not writable")

    add_healthcheck(app, "image", {"database": db.ping, "bus": None, "store": store_writable})

    @app.get("/", skip_auth=True)
    def versions() -> dict[str, Any]:
        bottle.response.status = 300
        return {"versions": [{"id": "v2.16", "status": "CURRENT",
                              "links": [{"rel": "self", "href": f"{base_url()}/v2/"}]}]}

    images.register(app, cfg.api, quotas, store)
    tags.register(app)
    data.register(app, db, max_bytes, quotas, store)
    return app

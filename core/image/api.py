"""The image API's entry point, kept where its callers import it from.

The service is built by :mod:`core.image.app` (the app factory) from one module per
resource (:mod:`core.image.images`, :mod:`core.image.tags`, :mod:`core.image.data`).
"""

from __future__ import annotations

from core.image.app import create_app

__all__ = ["create_app"]

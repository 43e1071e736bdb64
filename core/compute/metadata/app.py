"""The metadata service's WSGI app: Nova's paths, for the instance the request came from.

The instance is the one whose port holds the request's source address
(``REMOTE_ADDR``) on the network of the listener the request reached
(``environ[NETWORK_KEY]``, set by :func:`for_network`). Headers are never
believed (no ``X-Forwarded-For``, no ``X-Instance-ID``): a guest could send
them. Every path, ``/`` included, needs a known instance; an unknown source
gets 404 like an unknown path, and a lookup that cannot be made gets 503.
Only GET and HEAD are answered (405 otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from core.compute.metadata.lookup import InstanceLookup, LookupUnavailable
from core.compute.metadata.paths import NotFound, resolve

LOG = logging.getLogger(__name__)
NETWORK_KEY = "haven.metadata.network_id"
StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class MetadataApp:
    """The WSGI app (see the module docstring)."""

    def __init__(self, lookup: InstanceLookup) -> None:
        self.lookup = lookup

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed",
                          b"Only GET and HEAD are allowed.", method, [("Allow", "GET, HEAD")])
        network_id = environ.get(NETWORK_KEY)
        source = environ.get("REMOTE_ADDR", "")
        if not network_id or not source:
            LOG.error("metadata request without a network or a source address: not served")
            return _plain(start_response, "404 Not Found", b"Not Found", method)
        try:
            desc = self.lookup.find(network_id, source)
        except LookupUnavailable as exc:
            LOG.warning("metadata lookup for %s on %s unavailable: %s", source, network_id, exc)
            return _plain(start_response, "503 Service Unavailable",
                          b"Metadata is unavailable; try again later.", method)
        if desc is None:
            LOG.info("metadata request from %s on network %s: no instance holds it",
                     source, network_id)
            return _plain(start_response, "404 Not Found", b"Not Found", method)
        try:
            answer = resolve(desc, environ.get("PATH_INFO", ""))
        except NotFound:
            return _plain(start_response, "404 Not Found", b"Not Found", method)
        return _plain(start_response, "200 OK", answer.body, method,
                      content_type=answer.content_type)


def _plain(start_response: StartResponse, status: str, body: bytes, method: str,
           extra: list[tuple[str, str]] | None = None,
           content_type: str = "text/plain") -> list[bytes]:
    ctype = content_type + ("; charset=UTF-8" if content_type == "text/plain" else "")
    headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), *(extra or [])]
    start_response(status, headers)
    return [] if method == "HEAD" else [body]


def for_network(app: WsgiApp, network_id: str) -> WsgiApp:
    """``app`` as served on one network's listener: every request is marked with it
    (whatever the request says)."""

    def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        environ[NETWORK_KEY] = network_id
        return app(environ, start_response)

    return serve

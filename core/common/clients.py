"""How one Haven service calls another: HTTP through the catalog, like any client.

Services never import each other (in a cluster they are separate processes on
separate nodes). A service calls another either with the end user's token
(the compute API checking that the user may see an image, as Nova does) or
with the service user's token (the compute agent downloading an image). The
service token is obtained with a password once and reused until shortly
before it expires; the catalog that came with it says where everything is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from core.common.config import HavenConfig


class ServiceCallError(Exception):
    """Another service answered with an error (``status``) or not at all (status 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Token:
    value: str
    expires_at: float
    catalog: list[dict[str, Any]]


class ServiceClients:
    """A requests session plus the service user's token and catalog."""

    def __init__(self, cfg: HavenConfig, interface: str = "internal", timeout: float = 30.0):
        self.cfg = cfg
        self.interface = interface
        self.timeout = timeout
        host, _, port = cfg.identity.listen.rpartition(":")
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        internal = cfg.catalog.internal_host or cfg.catalog.public_host or host
        self.identity_url = f"{cfg.tls.scheme}://{internal}:{port}/v3"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._token: _Token | None = None

    @property
    def http(self) -> requests.Session:
        """One keep-alive session per thread (requests sessions are not thread-safe)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _service_token(self) -> _Token:
        with self._lock:
            if self._token is not None and self._token.expires_at - time.time() > 300:
                return self._token
            user = {"name": self.cfg.service_user.name, "domain": {"id": "default"},
                    "password": self.cfg.service_password()}
            body: dict[str, Any] = {"auth": {
                "identity": {"methods": ["password"], "password": {"user": user}},
                "scope": {"project": {"name": self.cfg.service_user.project,
                                      "domain": {"id": "default"}}}}}
            try:
                resp = self.http.post(f"{self.identity_url}/auth/tokens", json=body,
                                      timeout=self.timeout, verify=self.cfg.tls.verify)
            except requests.RequestException as exc:
                raise ServiceCallError(f"identity unreachable: {exc}") from exc
            if resp.status_code != 201:
                raise ServiceCallError(f"service login failed: {resp.status_code} {resp.text}",
                                       resp.status_code)
            token = resp.json()["token"]
            expires = time.mktime(time.strptime(token["expires_at"][:19], "%Y-%m-%dT%H:%M:%S"))
            expires -= time.timezone  # expires_at is UTC
            self._token = _Token(resp.headers["X-Subject-Token"], expires, token["catalog"])
            return self._token

    def endpoint(self, service_type: str) -> str:
        for svc in self._service_token().catalog:
            if svc["type"] == service_type:
                for ep in svc["endpoints"]:
                    if ep["interface"] == self.interface:
                        return str(ep["url"]).rstrip("/")
        raise ServiceCallError(f"no {self.interface} endpoint for {service_type} in the catalog")

    def request(self, method: str, service_type: str, path: str, token: str | None = None,
                expect: tuple[int, ...] = (200, 201, 202, 204), **kwargs: Any
                ) -> requests.Response:
        """Call ``service_type`` at ``path`` with ``token`` (default: the service token).

        Raises ServiceCallError unless the status is in ``expect``.
        """
        headers = dict(kwargs.pop("headers", {}) or {})
        headers["X-Auth-Token"] = token or self._service_token().value
        url = self.endpoint(service_type) + path
        try:
            # per request: a session's verify loses to $REQUESTS_CA_BUNDLE, this does not
            resp = self.http.request(method, url, headers=headers, verify=self.cfg.tls.verify,
                                     timeout=kwargs.pop("timeout", self.timeout), **kwargs)
        except requests.RequestException as exc:
            raise ServiceCallError(f"{service_type} unreachable: {exc}") from exc
        if resp.status_code not in expect:
            raise ServiceCallError(f"{method} {service_type}{path}: {resp.status_code} "
                                   f"{resp.text[:300]}", resp.status_code)
        return resp

    def download(self, service_type: str, path: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        resp = self.request("GET", service_type, path, stream=True)
        try:
            yield from resp.iter_content(chunk)
        finally:
            resp.close()

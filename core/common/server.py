"""Serving WSGI apps with production servers.

* The all-in-one runs every API in one process (the in-process bus needs
  that): one cheroot server per API, each on its own thread pool.
* A cluster node runs each API as its own process under gunicorn, with
  ``workers`` pre-forked processes (each builds its own app and database pool
  after the fork) of ``threads`` threads.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cheroot import wsgi

LOG = logging.getLogger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Listener:
    name: str
    listen: str
    app: Callable[..., Any]


class _Gateway(wsgi.Gateway_10):
    """Cheroot's WSGI gateway, but an app's ``Connection: close`` really closes.

    Stock cheroot keeps the connection and first reads whatever the app left of a
    declared request body (all of it, in one allocation): an unauthenticated
    upload refused at once would still be read whole. The app says
    ``Connection: close`` when it leaves a body unread (bodylimit.py); this
    makes cheroot mean it.
    """

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        if any(k.lower() == "connection" and v.lower() == "close" for k, v in headers):
            self.req.close_connection = True
        return super().start_response(status, headers, exc_info)


class AppServers:
    """Several cheroot servers started together and stopped together."""

    def __init__(self, listeners: list[Listener], threads: int = 16) -> None:
        self.listeners = listeners
        self.servers: list[wsgi.Server] = []
        for item in listeners:
            server = wsgi.Server(split_listen(item.listen), item.app, numthreads=threads,
                                 server_name=f"haven-{item.name}")
            server.shutdown_timeout = 5
            server.gateway = _Gateway
            self.servers.append(server)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Bind every listener (raising if one is taken), then serve in the background."""
        for server in self.servers:
            server.prepare()
        for server, item in zip(self.servers, self.listeners, strict=True):
            thread = threading.Thread(target=server.serve, name=f"serve-{item.name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def bound(self) -> list[tuple[str, str]]:
        """(name, host:port) actually bound; port 0 in the config becomes the real port."""
        out = []
        for server, item in zip(self.servers, self.listeners, strict=True):
            host, port = server.bind_addr[:2]
            out.append((item.name, f"{host}:{port}"))
        return out

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        for thread in self._threads:
            thread.join(timeout=10)


def wait_for_signal() -> int:
    """Block until SIGINT or SIGTERM; return the signal number."""
    received: list[int] = []
    event = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        received.append(signum)
        event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    event.wait()
    return received[0]


def serve_gunicorn(
    app_factory: Callable[[], Callable[..., Any]], listen: str, workers: int, threads: int,
    name: str, tls: tuple[str, str] | None = None,
) -> None:
    """Run ``app_factory()`` in gunicorn's pre-fork model until told to stop; over
    https with ``tls`` (certificate file, key file), set in gunicorn's own config
    (never on a command line)."""
    from gunicorn.app.base import BaseApplication

    class _App(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", listen)
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("proc_name", f"haven-{name}")
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("keepalive", 5)
            # gunicorn >= 27 opens $HOME/.gunicorn/gunicorn.ctl by default; two services
            # on one node would fight over it, and nothing here uses it.
            self.cfg.set("control_socket_disable", True)
            if tls is not None:
                self.cfg.set("certfile", tls[0])
                self.cfg.set("keyfile", tls[1])

        def load(self) -> Callable[..., Any]:
            return app_factory()

    _App().run()

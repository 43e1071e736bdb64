"""Listening for guests: a socket bound inside a network's namespace, served by cheroot.

Each tenant network that a hypervisor serves has its metadata address
(169.254.169.254 unless told otherwise) in a namespace of its own; the
service binds one socket there per network and marks every request on it
with that network's id (:func:`core.compute.metadata.app.for_network`). The
service process itself stays in the host's namespace: the socket is made by
a short-lived thread that enters the namespace (``setns`` changes only the
calling thread's namespace, and a socket stays in the namespace it was made
in), so nothing else of the process ever runs in a tenant's network.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from typing import Any

from cheroot import wsgi

from core.compute.metadata.app import WsgiApp, for_network

METADATA_ADDRESS = "169.254.169.254"
CLONE_NEWNET = 0x40000000


class ListenError(OSError):
    """The listener could not be set up (no such namespace, address not there...)."""


def netns_path(netns: str) -> str:
    """``ip netns``'s path for a name; a path (``/proc/<pid>/ns/net``) as it is."""
    return netns if "/" in netns else os.path.join("/run/netns", netns)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise ListenError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _bound(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise ListenError(exc.errno, f"bind {address}:{port}: {exc.strerror}") from exc
    return sock


def bind_socket(address: str = METADATA_ADDRESS, port: int = 80,
                netns: str | None = None) -> socket.socket:
    """A TCP socket bound to ``address:port``, in the network namespace ``netns``
    (a name under /run/netns or a path) or, if None, in the caller's own."""
    if netns is None:
        return _bound(address, port)
    result: dict[str, Any] = {}

    def in_namespace() -> None:
        # This thread ends right after: its namespace is never seen by other work.
        try:
            _setns(netns_path(netns))
            result["sock"] = _bound(address, port)
        except (OSError, ListenError) as exc:
            result["error"] = exc

    thread = threading.Thread(target=in_namespace, name=f"metadata-bind-{netns}")
    thread.start()
    thread.join()
    if "error" in result:
        err = result["error"]
        raise err if isinstance(err, ListenError) else ListenError(err.errno, str(err))
    return result["sock"]


class _PreboundServer(wsgi.Server):
    """cheroot's server, on a socket bound elsewhere (in another namespace)."""

    def __init__(self, sock: socket.socket, app: WsgiApp, threads: int, name: str) -> None:
        self._prebound = sock
        super().__init__(sock.getsockname()[:2], app, numthreads=threads, server_name=name)

    def bind(self, family: Any, type: Any, proto: int = 0) -> None:
        self.socket = self._prebound
        self.bind_addr = self.socket.getsockname()[:2]


class MetadataListener:
    """The metadata app served on one network's socket, in a background thread."""

    def __init__(self, app: WsgiApp, network_id: str, address: str = METADATA_ADDRESS,
                 port: int = 80, netns: str | None = None, threads: int = 4) -> None:
        self.network_id = network_id
        sock = bind_socket(address, port, netns)
        self.server = _PreboundServer(sock, for_network(app, network_id), threads,
                                      f"haven-metadata-{network_id}")
        self.server.shutdown_timeout = 2
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.bind_addr
        return host, int(port)

    def start(self) -> None:
        self.server.prepare()
        self._thread = threading.Thread(target=self.server.serve, daemon=True,
                                        name=f"metadata-{self.network_id}")
        self._thread.start()

    def stop(self) -> None:
        self.server.stop()
        if self._thread is not None:
            self._thread.join()


class MetadataListeners:
    """One listener per network a hypervisor serves, kept equal to what it should serve.

    The hypervisor agent calls :meth:`reconcile` with every network that has a
    port on this host (network id -> the namespace holding its metadata
    address) whenever that changes, and at start; listeners of networks no
    longer there are stopped, new ones started. One network's failure to bind
    does not keep the others from being served: it is reported and retried on
    the next reconcile.
    """

    def __init__(self, app: WsgiApp, address: str = METADATA_ADDRESS, port: int = 80,
                 threads: int = 4) -> None:
        self.app = app
        self.address = address
        self.port = port
        self.threads = threads
        self.running: dict[str, tuple[str, MetadataListener]] = {}

    def reconcile(self, networks: dict[str, str]) -> dict[str, ListenError]:
        """Serve exactly ``networks`` ({network id: netns}); the ones that failed, why."""
        for network_id in list(self.running):
            netns, listener = self.running[network_id]
            if networks.get(network_id) != netns:
                listener.stop()
                del self.running[network_id]
        failed: dict[str, ListenError] = {}
        for network_id, netns in networks.items():
            if network_id in self.running:
                continue
            try:
                listener = MetadataListener(self.app, network_id, self.address, self.port,
                                            netns, self.threads)
            except OSError as exc:  # ListenError included
                failed[network_id] = (exc if isinstance(exc, ListenError)
                                      else ListenError(exc.errno, str(exc)))
                continue
            try:
                listener.start()
            except OSError as exc:
                listener.server.socket.close()
                failed[network_id] = ListenError(exc.errno, str(exc))
                continue
            self.running[network_id] = (netns, listener)
        return failed

    def stop(self) -> None:
        self.reconcile({})

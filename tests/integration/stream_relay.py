"""A byte relay between two stream addresses, for tests: ``python stream_relay.py LISTEN
TARGET``, each ``tcp:HOST:PORT`` or ``unix:PATH``; prints ``ready`` once listening.

Why: a process in a network namespace a test made (an OCF agent run as on a node)
cannot reach the host's loopback, where the test's broker listens. Two relays joined
by a Unix socket (a file, seen from every namespace) carry its connections across
without an address or an interface added to the host's own namespace.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading


def _address(spec: str) -> tuple[int, str | tuple[str, int]]:
    kind, _, rest = spec.partition(":")
    if kind == "unix":
        return socket.AF_UNIX, rest
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        return socket.AF_INET, (host, int(port))
    raise SystemExit(f"bad address {spec!r}: tcp:HOST:PORT or unix:PATH")


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _serve(client: socket.socket, target: tuple[int, str | tuple[str, int]]) -> None:
    upstream = socket.socket(target[0], socket.SOCK_STREAM)
    try:
        upstream.connect(target[1])
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def main(listen: str, target: str) -> None:
    family, where = _address(listen)
    server = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_UNIX:
        assert isinstance(where, str)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where)
    else:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(where)
    server.listen(16)
    upstream = _address(target)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=_serve, args=(client, upstream), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

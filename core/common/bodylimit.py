"""A ceiling on every request body, chunked or not, before any of it is read.

Both servers Haven runs under (cheroot in the all-in-one, gunicorn on cluster
nodes) decode ``Transfer-Encoding: chunked`` themselves and hand the app a
``wsgi.input`` with no length: a check of ``Content-Length`` alone lets such a
body through at any size. So every request's ``wsgi.input`` is replaced by a
:class:`BoundedInput` that refuses to read past its limit (1 MiB unless a route
raises it, as the image upload does after authenticating the caller). A body
that goes over is answered 413, and so is one whose declared length already is.

Whatever the app leaves unread is never read afterwards either: a response
given before the whole body was consumed says ``Connection: close``. Cheroot
would otherwise read the rest of a declared length to keep the connection (in
one allocation of that size); gunicorn drains at most 64 KiB on its own and then
closes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from core.common.faults import TooLarge

ENVIRON_KEY = "haven.input"
MAX_BODY = 1024 * 1024

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class BodyTooLarge(TooLarge):
    """The request body is (or claims to be) larger than the limit in force."""

    def __init__(self, limit: int, what: str = "Request body") -> None:
        super().__init__(f"{what} larger than the limit of {describe(limit)}.")
        self.limit = limit


def describe(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


def declared_length(environ: dict[str, Any]) -> int | None:
    """``Content-Length`` as an integer; None when absent (chunked, or no body)."""
    raw = environ.get("CONTENT_LENGTH") or ""
    try:
        return int(raw) if raw.strip() else None
    except ValueError:
        return None  # the server already refused a malformed one


def has_body(environ: dict[str, Any]) -> bool:
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    return chunked or (declared_length(environ) or 0) > 0


class BoundedInput:
    """A ``wsgi.input`` that raises :class:`BodyTooLarge` instead of reading past ``limit``.

    It never reads more than one byte beyond the limit from the server's stream
    (that byte is what tells "exactly at the limit" from "over it").
    """

    def __init__(self, stream: Any, limit: int, declared: int | None, expected: bool) -> None:
        self._stream = stream
        self.limit = limit
        self.declared = declared
        self.consumed = 0
        self.exhausted = not expected  # all of the body has been read (or there is none)
        self.what = "Request body"

    def allow(self, limit: int, what: str) -> BoundedInput:
        """Raise (or lower) the ceiling for this request, naming what it limits."""
        self.limit = limit
        self.what = what
        return self

    def _room(self, size: int | None) -> int:
        room = self.limit + 1 - self.consumed
        if room <= 0:
            raise BodyTooLarge(self.limit, self.what)
        return room if size is None or size < 0 else min(size, room)

    def _account(self, data: bytes, asked: int) -> bytes:
        if not data and asked > 0:
            self.exhausted = True
        self.consumed += len(data)
        if self.consumed > self.limit:
            raise BodyTooLarge(self.limit, self.what)
        if self.declared is not None and self.consumed >= self.declared:
            self.exhausted = True
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            chunks = []
            while chunk := self.read(1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        want = self._room(size)
        return self._account(self._stream.read(want), want)

    def readline(self, size: int | None = -1) -> bytes:
        want = self._room(size)
        return self._account(self._stream.readline(want), want)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines = []
        while line := self.readline():
            lines.append(line)
        return lines

    def __iter__(self) -> BoundedInput:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def read_all(environ: dict[str, Any]) -> bytes:
    """The whole body of this request, within its limit (413 if over)."""
    stream: BoundedInput = environ[ENVIRON_KEY]
    length = declared_length(environ)
    if length is not None and length > stream.limit:
        raise BodyTooLarge(stream.limit, stream.what)
    chunks = []
    while chunk := stream.read(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def limit_bodies(app: WsgiApp, limit: int = MAX_BODY) -> WsgiApp:
    """Wrap ``app`` so that every request's body is bounded (see the module docstring)."""

    def middleware(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        bounded = BoundedInput(environ.get("wsgi.input"), limit, declared_length(environ),
                               has_body(environ))
        environ["wsgi.input"] = bounded
        environ[ENVIRON_KEY] = bounded

        def closing_start_response(status: str, headers: list[tuple[str, str]],
                                   exc_info: Any = None) -> Any:
            if not bounded.exhausted and not any(k.lower() == "connection" for k, _ in headers):
                headers = [*headers, ("Connection", "close")]
            return start_response(status, headers, exc_info)

        return app(environ, closing_start_response)

    return middleware

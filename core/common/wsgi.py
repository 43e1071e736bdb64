"""The HTTP layer every Haven API shares: an app factory and one bottle plugin.

The plugin gives each request what handlers should not have to think about:

* a body read whole before anything else, within the 1 MiB limit that
  bodylimit.py puts on every request, chunked or not (a route that streams a
  bigger body says ``raw_body`` and raises the limit with :func:`request_stream`);
* a request id (``X-Openstack-Request-Id``) in the response and in every log line;
* one database session, committed when the handler returns and rolled back on
  any error; when the database reports a lost conflict or a dropped connection
  (Galera behind a VIP) the whole handler runs again on a fresh session, which is
  safe because nothing of the failed try was committed;
* the caller's token validated locally (unless the route says ``skip_auth``);
* JSON rendering, and faults rendered the way the service's OpenStack twin does.
  Nothing a client sends produces a traceback: unexpected errors are logged with
  the request id and answered with a plain 500.
"""

from __future__ import annotations

import contextvars
import io
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import bottle
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core.common.auth import AuthContext, TokenValidator, Unauthorized
from core.common.bodylimit import ENVIRON_KEY, MAX_BODY, BoundedInput, limit_bodies, read_all
from core.common.db import Database, is_retryable
from core.common.faults import BadRequest, Fault, FaultStyle, TooLarge, fault_body

LOG = logging.getLogger(__name__)
ACCESS_LOG = logging.getLogger("haven.access")
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
T = TypeVar("T")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record, for the log format."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def session() -> Session:
    """The current request's database session."""
    return bottle.request.environ["haven.session"]


def commit() -> None:
    """Commit the request's work so far (others must see it before the handler goes on).

    After this, a database error no longer re-runs the handler from the top.
    """
    bottle.request.environ["haven.session"].commit()
    bottle.request.environ["haven.committed"] = True


def auth() -> AuthContext:
    """The current request's validated caller."""
    return bottle.request.environ["haven.auth"]


def request_stream(limit: int, what: str) -> BoundedInput:
    """The request body as a stream bounded at ``limit`` bytes (413 past it), for a
    ``raw_body`` route that streams more than the default 1 MiB somewhere."""
    return bottle.request.environ[ENVIRON_KEY].allow(limit, what)


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    raw = bottle.request.body.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise TooLarge(f"Request body larger than {MAX_BODY} bytes")
    if not raw.strip():
        raise BadRequest("Request body is empty; a JSON object is required.")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Malformed JSON in request body: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object.")
    return data


_MISSING = object()


def field(
    obj: Mapping[str, Any],
    path: str,
    kind: type[T] | tuple[type, ...],
    default: Any = _MISSING,
) -> T:
    """``obj[a][b]...`` for ``path`` ``"a.b"``, type-checked; a 400 naming the field if not.

    ``default`` makes the field optional (returned when absent or null).
    """
    node: Any = obj
    parts = path.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if not isinstance(node, Mapping):
            raise BadRequest(f"Invalid input for field '{'.'.join(parts[:i])}': not an object.")
        if part not in node or node[part] is None:
            if default is not _MISSING:
                return default
            raise BadRequest(f"Missing required field '{where}'.")
        node = node[part]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if bool not in kinds and isinstance(node, bool) and int in kinds:
        node = object()  # true/false is not an integer, whatever Python thinks
    if not isinstance(node, kinds):
        names = " or ".join({str: "string", int: "integer", bool: "boolean", dict: "object",
                             list: "array"}.get(k, k.__name__) for k in kinds)
        raise BadRequest(f"Invalid input for field '{path}': expected {names}.")
    if isinstance(node, str) and len(node) > 65535:
        raise BadRequest(f"Invalid input for field '{path}': too long.")
    return node  # type: ignore[return-value]


class HavenPlugin:
    """The bottle plugin described in the module docstring."""

    name = "haven"
    api = 2

    def __init__(
        self, db: Database, validator: TokenValidator | None, style: FaultStyle,
        prepare: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.validator = validator
        self.style = style
        self.prepare = prepare

    def apply(self, callback: Callable[..., Any], route: bottle.Route) -> Callable[..., Any]:
        skip_auth = route.config.get("skip_auth", False) or self.validator is None
        # optional_auth: anyone may call; a valid token is still recognised (auth() then
        # works, else environ has no "haven.auth"), an invalid one is ignored
        optional_auth = route.config.get("optional_auth", False) and self.validator is not None
        skip_auth = skip_auth or optional_auth
        raw_body = route.config.get("raw_body", False)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not raw_body:
                # Read it now, bounded, before authentication; bottle would spool any
                # size to a temporary file (and decode a chunked body a second time).
                # Buffered here, a retry of the handler reads it again.
                try:
                    data = read_all(bottle.request.environ)
                except TooLarge as exc:
                    return self.fault(exc)
                bottle.request.environ["bottle.request.body"] = io.BytesIO(data)
            attempt = 0
            while True:
                try:
                    return self._once(callback, skip_auth, optional_auth, args, kwargs)
                except DBAPIError as exc:
                    committed = bottle.request.environ.pop("haven.committed", False)
                    # A handler that already committed part of its work must not run
                    # again from the top (it would do that part twice).
                    if committed or not is_retryable(exc) or attempt >= self.db.max_retries:
                        LOG.exception("database error")
                        return self.fault(Fault("The database is unavailable.", 503))
                    attempt += 1
                    LOG.warning("retrying request (attempt %d) after: %s", attempt, exc.orig)
                    time.sleep(min(0.05 * 2**attempt, 1.0))

        return wrapper

    def _once(
        self, callback: Callable[..., Any], skip_auth: bool, optional_auth: bool, args: Any,
        kwargs: Any,
    ) -> Any:
        environ = bottle.request.environ
        sess = self.db.sessions()
        environ["haven.session"] = sess
        try:
            if self.prepare is not None:
                self.prepare()
            if optional_auth:
                self._recognise(sess)
            if not skip_auth:
                token = bottle.request.get_header("X-Auth-Token")
                if not token:
                    raise Fault("The request you have made requires authentication.", 401)
                try:
                    assert self.validator is not None
                    environ["haven.auth"] = self.validator.validate(sess, token)
                except Unauthorized:
                    raise Fault(
                        "The request you have made requires authentication.", 401
                    ) from None
            result = callback(*args, **kwargs)
            sess.commit()
            return self.render(result)
        except Fault as fault:
            sess.rollback()
            return self.fault(fault)
        except bottle.HTTPResponse:
            sess.rollback()
            raise
        except DBAPIError:
            sess.rollback()
            raise
        except Exception:
            sess.rollback()
            LOG.exception("unexpected error handling %s %s", bottle.request.method,
                          bottle.request.path)
            return self.fault(Fault("An unexpected error prevented the request from being "
                                    "fulfilled.", 500))
        finally:
            sess.close()

    def _recognise(self, sess: Session) -> None:
        """Validate the token of an ``optional_auth`` route's caller, if it has one."""
        token = bottle.request.get_header("X-Auth-Token")
        if not token or self.validator is None:
            return
        try:
            bottle.request.environ["haven.auth"] = self.validator.validate(sess, token)
        except Unauthorized:
            pass  # anonymous, then
        except DBAPIError:
            sess.rollback()  # the database is down: the caller stays anonymous

    @staticmethod
    def render(result: Any) -> Any:
        if result is None:
            if bottle.response.status_code == 200:
                bottle.response.status = 204
            return b""
        if isinstance(result, dict | list):
            bottle.response.content_type = "application/json"
            return json.dumps(result)
        return result

    def fault(self, fault: Fault) -> str:
        bottle.response.status = fault.status
        bottle.response.content_type = "application/json"
        for name, value in fault.headers.items():
            bottle.response.set_header(name.replace("_", "-"), value)
        if fault.status == 401:
            bottle.response.set_header("WWW-Authenticate", 'Keystone uri="' +
                                       bottle.request.urlparts.scheme + "://" +
                                       bottle.request.urlparts.netloc + '"')
        return fault_body(self.style, fault.status, fault.message, fault.neutron_type,
                          fault.error_type)


class _BoundedBottle(bottle.Bottle):
    """A bottle app every request of which goes through bodylimit's ceiling."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return limit_bodies(self.wsgi)(environ, start_response)


def make_app(db: Database, validator: TokenValidator | None, style: FaultStyle,
             prepare: Callable[[], None] | None = None) -> bottle.Bottle:
    """A bottle app with Haven's plugin, request ids, and JSON for router errors too.

    ``prepare`` runs before authentication on every routed request (the compute
    API parses the microversion there) and may raise a Fault.
    """
    app = _BoundedBottle(catchall=True)
    app.config["json.enable"] = False  # the Haven plugin renders JSON itself
    app.install(HavenPlugin(db, validator, style, prepare))

    @app.hook("before_request")
    def _start() -> None:
        incoming = bottle.request.get_header("X-Openstack-Request-Id", "")
        rid = incoming if incoming.startswith("req-") and len(incoming) < 64 else (
            f"req-{uuid.uuid4()}"
        )
        REQUEST_ID.set(rid)
        bottle.request.environ["haven.request_id"] = rid
        bottle.request.environ["haven.started"] = time.monotonic()

    @app.hook("after_request")
    def _finish() -> None:
        rid = bottle.request.environ.get("haven.request_id", "-")
        bottle.response.set_header("X-Openstack-Request-Id", rid)
        started = bottle.request.environ.get("haven.started", time.monotonic())
        ACCESS_LOG.info(
            "%s %s %s %.1fms",
            bottle.request.method,
            bottle.request.path,
            bottle.response.status_code,
            (time.monotonic() - started) * 1000,
        )

    def router_error(err: bottle.HTTPError) -> str:
        # Unknown paths (404), wrong methods (405), and anything bottle itself caught.
        status = err.status_code
        if status >= 500:
            LOG.error("unhandled error: %s", err.exception or err.body)
            message = "An unexpected error prevented the request from being fulfilled."
        elif status == 404:
            message = f"The resource could not be found: {bottle.request.path}"
        elif status == 405:
            message = f"Method {bottle.request.method} is not allowed on {bottle.request.path}."
        else:
            message = str(err.body)
        bottle.response.content_type = "application/json"
        bottle.response.set_header("X-Openstack-Request-Id",
                                   bottle.request.environ.get("haven.request_id", "-"))
        return fault_body(style, status, message)

    app.default_error_handler = router_error
    return app


def base_url() -> str:
    """The URL the client used to reach this service, for links."""
    parts = bottle.request.urlparts
    return f"{parts.scheme}://{parts.netloc}{bottle.request.script_name.rstrip('/')}"

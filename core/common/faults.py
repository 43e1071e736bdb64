"""API errors and how each service renders them.

Handlers raise :class:`Fault` subclasses; the WSGI layer turns them into the
JSON body the service's OpenStack counterpart uses, so stock clients print the
message. Keystone wraps errors as ``{"error": {"code", "title", "message"}}``;
Nova, Glance and Cinder use ``{"<camelName>": {"code", "message"}}``; Neutron
``{"NeutronError": {"type", "message", "detail"}}``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

FaultStyle = Literal["keystone", "nova", "neutron"]

TITLES = {
    400: ("Bad Request", "badRequest"),
    401: ("Unauthorized", "unauthorized"),
    403: ("Forbidden", "forbidden"),
    404: ("Not Found", "itemNotFound"),
    405: ("Method Not Allowed", "methodNotAllowed"),
    409: ("Conflict", "conflictingRequest"),
    413: ("Request Entity Too Large", "overLimit"),
    415: ("Unsupported Media Type", "unsupportedMediaType"),
    429: ("Too Many Requests", "overLimit"),
    500: ("Internal Server Error", "computeFault"),
    503: ("Service Unavailable", "serviceUnavailable"),
}


class Fault(Exception):
    """An error with an HTTP status and a message meant for the client."""

    status = 500
    neutron_type: str | None = None  # Neutron's error type, where its status alone is vague
    # A machine-readable reason for Haven's own callers (core/compute/errors.py), shown
    # as "type" beside Nova's code and message; stock clients ignore it.
    error_type: str | None = None

    def __init__(self, message: str, status: int | None = None, **headers: str) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers


class BadRequest(Fault):
    status = 400


class Unauthorized(Fault):
    status = 401


class Forbidden(Fault):
    status = 403


class NotFound(Fault):
    status = 404


class Conflict(Fault):
    status = 409


class TooLarge(Fault):
    status = 413


class OverQuota(Conflict):
    """Neutron's answer to a creation past the project's quota."""

    neutron_type = "OverQuota"


def fault_body(style: FaultStyle, status: int, message: str,
               neutron_type: str | None = None, error_type: str | None = None) -> str:
    title, key = TITLES.get(status, ("Error", "error"))
    body: dict[str, Any]
    if style == "keystone":
        body = {"error": {"code": status, "title": title, "message": message}}
    elif style == "neutron":
        kind = neutron_type or {400: "BadRequest", 401: "NotAuthorized", 403: "PolicyNotAuthorized",
                404: "NotFound", 409: "Conflict"}.get(status, "NeutronError")
        body = {"NeutronError": {"type": kind, "message": message, "detail": ""}}
    else:
        body = {key: {"code": status, "message": message}}
        if error_type is not None:
            body[key]["type"] = error_type
    return json.dumps(body)

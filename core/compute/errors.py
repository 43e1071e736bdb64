"""The compute API's refusals as types, and the codes Haven's other parts read.

An evacuation can be refused for several reasons the evacuation controller
(``ha/evacuator/real.py``) must tell apart: a full fleet is final, an instance that
moved is looked at again, a database hiccup is retried. It used to read them out of
the message text; now each refusal is a :class:`ComputeFault` with a stable
:class:`ErrorCode`, carried in the batch evacuate answer per server
(``{"error": {"code": <HTTP status>, "type": <ErrorCode>, "message": ...}}``) and in the
error body of a refused request (``{"conflictingRequest": {..., "type": ...}}``).
The codes are defined here once; ``ha`` imports them (``ha`` may import ``core``,
never the reverse).

A code is part of Haven's internal API: rename one only together with every reader.
"""

from __future__ import annotations

from enum import StrEnum

from core.common.faults import Fault, Forbidden, NotFound


class ErrorCode(StrEnum):
    """Why the compute API refused to move (or create) an instance."""

    NO_VALID_HOST = "no_valid_host"  # no host has room (or passes the filters): final
    CLAIMS_LOST = "claims_lost"  # every claim lost to concurrent placements: retry
    IN_USE = "in_use"  # the instance changed (another action or evacuation) meanwhile
    NOT_EVACUABLE = "not_evacuable"  # its vm_state/task_state does not allow it
    NOT_ON_SOURCE = "not_on_source"  # it is not on the host evacuated (or on none)
    SOURCE_NOT_DOWN = "source_not_down"  # the source host's service is not forced down
    BAD_TARGET = "bad_target"  # the requested target host is the instance's own host
    GROUP_BUSY = "group_busy"  # its server group's lock was contended past the bound
    NOT_FOUND = "not_found"  # no such instance (or one the caller cannot see)
    FORBIDDEN = "forbidden"  # the caller may see the instance but not change it
    UNEXPECTED = "unexpected"  # any other refusal: read its HTTP status


class ComputeFault(Fault):
    """A refusal with a code for Haven's own callers (the HTTP status stays Nova's)."""

    error_code: ErrorCode = ErrorCode.UNEXPECTED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.error_type = self.error_code.value


class NoValidHost(ComputeFault):
    status = 409
    error_code = ErrorCode.NO_VALID_HOST


class ClaimsLost(ComputeFault):
    status = 503
    error_code = ErrorCode.CLAIMS_LOST


class InUse(ComputeFault):
    status = 409
    error_code = ErrorCode.IN_USE


class NotEvacuable(ComputeFault):
    status = 409
    error_code = ErrorCode.NOT_EVACUABLE


class NotOnSource(ComputeFault):
    status = 409
    error_code = ErrorCode.NOT_ON_SOURCE


class SourceNotDown(ComputeFault):
    status = 409
    error_code = ErrorCode.SOURCE_NOT_DOWN


class BadTarget(ComputeFault):
    status = 400
    error_code = ErrorCode.BAD_TARGET


class GroupBusy(ComputeFault):
    status = 409
    error_code = ErrorCode.GROUP_BUSY


def code_of(fault: Fault) -> ErrorCode:
    """The code of any fault an evacuation may raise: its own, or, for the generic
    lookups' faults (a server that is not there, or not the caller's to change), the
    matching one; anything else is UNEXPECTED (the caller falls back on the status)."""
    if isinstance(fault, ComputeFault):
        return fault.error_code
    if isinstance(fault, NotFound):
        return ErrorCode.NOT_FOUND
    if isinstance(fault, Forbidden):
        return ErrorCode.FORBIDDEN
    return ErrorCode.UNEXPECTED

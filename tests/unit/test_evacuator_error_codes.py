"""The evacuation controller reads the compute API's refusal codes, never its messages:
every code (core/compute/errors.py) has its meaning in ha/evacuator/real.py, and a
refusal without a code is read by its HTTP status alone."""

from __future__ import annotations

import pytest

from core.common.faults import BadRequest, Fault, Forbidden, NotFound
from core.common.faults import Conflict as ConflictFault
from core.compute import errors
from core.compute.errors import ErrorCode
from ha.evacuator.env import Conflict, NoValidHost, TransientError
from ha.evacuator.real import CODE_ERRORS, call_error


def test_every_code_has_its_meaning_for_the_controller() -> None:
    assert set(CODE_ERRORS) == set(ErrorCode)


def test_every_typed_refusal_has_its_own_code() -> None:
    faults = [c for c in vars(errors).values()
              if isinstance(c, type) and issubclass(c, errors.ComputeFault)
              and c is not errors.ComputeFault]
    codes = [c.error_code for c in faults]
    assert len(set(codes)) == len(codes)
    # every code but the generic lookups' and the catch-all is raised as its own type
    assert set(codes) == set(ErrorCode) - {ErrorCode.NOT_FOUND, ErrorCode.FORBIDDEN,
                                           ErrorCode.UNEXPECTED}
    for kind in faults:
        fault = kind("m")
        assert fault.error_type == kind.error_code.value
        assert errors.code_of(fault) is kind.error_code


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("no_valid_host", 409, NoValidHost), ("claims_lost", 503, TransientError),
    ("in_use", 409, Conflict), ("not_evacuable", 409, Conflict),
    ("not_on_source", 409, Conflict), ("source_not_down", 409, Conflict),
    ("bad_target", 400, Conflict), ("group_busy", 409, Conflict),
    ("not_found", 404, Conflict), ("forbidden", 403, Conflict),
    ("unexpected", 500, TransientError), ("unexpected", 409, Conflict)])
def test_each_code_maps_whatever_the_message(code: str, status: int,
                                             expected: type) -> None:
    for message in ("No valid host was found", "in use", ""):
        assert type(call_error(status, message, code)) is expected


def test_without_a_code_the_status_decides_never_the_text() -> None:
    assert type(call_error(409, "No valid host was found")) is Conflict
    assert type(call_error(404, "No valid host")) is Conflict
    assert type(call_error(502, "No valid host")) is TransientError
    assert type(call_error(None, "unreachable")) is TransientError
    # a code this controller does not know (a newer API): its status, too
    assert type(call_error(409, "No valid host", "brand_new_reason")) is Conflict
    assert type(call_error(503, "x", "brand_new_reason")) is TransientError


def test_generic_faults_get_the_matching_code() -> None:
    assert errors.code_of(NotFound("gone")) is ErrorCode.NOT_FOUND
    assert errors.code_of(Forbidden("no")) is ErrorCode.FORBIDDEN
    assert errors.code_of(ConflictFault("x")) is ErrorCode.UNEXPECTED
    assert errors.code_of(BadRequest("x")) is ErrorCode.UNEXPECTED
    assert errors.code_of(Fault("x", 500)) is ErrorCode.UNEXPECTED

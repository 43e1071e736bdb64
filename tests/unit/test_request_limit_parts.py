"""The parts behind the request limits, alone: the bounded body reader, page sizes,
the RE2 name filter and who counts as local for /healthcheck."""

from __future__ import annotations

import io

import pytest

from core.common.bodylimit import BodyTooLarge, BoundedInput
from core.common.faults import BadRequest
from core.common.health import from_loopback
from core.common.paging import next_links, page_limit, paginate
from core.compute.name_filter import name_matcher


def test_bounded_input_reads_up_to_the_limit_and_never_past_it() -> None:
    source = io.BytesIO(b"x" * 10 + b"y" * 100)
    body = BoundedInput(source, 10, None, True)
    assert body.read(4) + body.read(6) == b"x" * 10
    with pytest.raises(BodyTooLarge, match="larger than the limit of 10 bytes"):
        body.read(100)
    assert source.tell() == 11  # one byte past the limit, never more
    exact = BoundedInput(io.BytesIO(b"z" * 10), 10, 10, True)
    assert exact.read() == b"z" * 10 and exact.exhausted


def test_page_limit_is_clamped_and_checked() -> None:
    assert page_limit({}, 1000) == 1000
    assert page_limit({"limit": "5000"}, 1000) == 1000
    assert page_limit({"limit": "3"}, 1000) == 3
    for bad in ("-1", "x"):
        with pytest.raises(BadRequest, match="'limit'"):
            page_limit({"limit": bad}, 1000)
    rows, limit = paginate(["a", "b", "c"], ["a", "b", "c"], {"marker": "a", "limit": "1"}, 9)
    assert (rows, limit) == (["b"], 1)
    assert next_links("u", {"limit": "1"}, 1, 1, "b") == [
        {"rel": "next", "href": "u?limit=1&marker=b"}]
    assert next_links("u", {}, 2, 1, "b") == []


def test_name_filter_is_a_search_and_refuses_what_re2_cannot_run() -> None:
    assert name_matcher("eb-0")("web-01") and not name_matcher("^eb")("web-01")
    assert not name_matcher("(a+)+$")("a" * 100_000 + "!")
    with pytest.raises(BadRequest, match="'name'"):
        name_matcher("(?=lookahead)")


def test_only_loopback_peers_are_local() -> None:
    for peer in ("127.0.0.1", "127.8.0.3", "::1", "::ffff:127.0.0.1"):
        assert from_loopback({"REMOTE_ADDR": peer}), peer
    for peer in ("192.0.2.2", "::ffff:10.0.0.1", "", "unix:/x"):
        assert not from_loopback({"REMOTE_ADDR": peer}), peer

"""The lab benchmarks' pure parts: their arguments, the token they record, and the
statistics they print. The benches themselves need a lab (tests/bench/, run by hand
under the lab lock); what they compute from the lab's answers is checked here."""

from __future__ import annotations

import json

import pytest

from ha.bootstrap.corosync import DEFAULT_TOKEN_MS
from tests.bench import evacuation, failover
from tests.bench.benchlib import (
    TUNED_TOKEN_MS,
    BenchError,
    check_token,
    parse_cmap_token,
    parse_sizes,
    parse_tokens,
    seconds,
    summary,
)


def test_tokens_default_to_the_products_then_a_tuned_one() -> None:
    for bench in (failover, evacuation):
        assert bench.parse_args([]).tokens == [DEFAULT_TOKEN_MS, TUNED_TOKEN_MS]
    assert TUNED_TOKEN_MS < DEFAULT_TOKEN_MS


@pytest.mark.parametrize("text", ["3000,abc", "400", "3000,3000", "", "1.5"])
def test_bad_tokens_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_tokens(text)


def test_bad_token_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        failover.parse_args(["--tokens", "100"])
    assert "under 500 ms" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evacuation.parse_args(["--runs", "0"])


def test_flags_parse() -> None:
    f = failover.parse_args(["--runs", "3", "--tokens", "1000"])
    assert (f.runs, f.tokens) == (3, [1000])
    e = evacuation.parse_args(["--sizes", "20", "--runs", "1", "--vd-sizes", "", "--vd-runs",
                               "2", "--tokens", "3000,1000", "--profile"])
    assert (e.sizes, e.runs, e.vd_sizes, e.vd_runs, e.tokens, e.profile) == (
        [20], 1, [], 2, [3000, 1000], True)
    with pytest.raises(ValueError):
        parse_sizes("5,0")


def test_running_token_is_read_from_cmapctl_or_refused() -> None:
    assert parse_cmap_token("runtime.config.totem.token (u32) = 1500\n") == 1500
    assert parse_cmap_token("x\nruntime.config.totem.token (u32) = 3000") == 3000
    for out in ("", "Can't get key runtime.config.totem.token. Error CS_ERR_NOT_EXIST",
                "runtime.config.totem.token_retransmit (u32) = 714"):
        with pytest.raises(BenchError):
            parse_cmap_token(out)
    check_token(1500, 1500)
    with pytest.raises(BenchError):
        check_token(1500, 3000)


def test_summary() -> None:
    assert summary([3.0, 1.0, 2.0, 10.0]) == {"p50": 2.5, "min": 1.0, "max": 10.0}
    assert summary([7.534]) == {"p50": 7.53, "min": 7.53, "max": 7.53}
    assert summary([]) == {"p50": None, "min": None, "max": None}
    assert (seconds(None), seconds(7.534)) == ("n/a", "7.53 s")


def probe_lines(*docs: dict[str, object]) -> list[str]:
    return [json.dumps(d) for d in docs]


def test_probe_times_need_a_read_and_a_confirmed_write() -> None:
    ok = probe_lines({"ready": 1.0}, {"t": 2.0, "kind": "write", "failing": "ConnectTimeout"},
                     {"ok_read": 9.5}, {"ok_write": 11.0, "id": "n1"},
                     {"write_confirmed": True})
    assert failover.probe_times(ok) == {"ok_read": 9.5, "ok_write": 11.0,
                                        "write_confirmed": True}
    with pytest.raises(BenchError, match="not found"):
        failover.probe_times(ok[:-1] + probe_lines({"write_confirmed": False}))
    with pytest.raises(BenchError, match="ok_write"):
        failover.probe_times(ok[:3])


def test_failover_doc_records_the_token_and_both_figures() -> None:
    base = {"kill_s": 0.1, "victim_was_dc": 0.0}
    runs = [{**base, "victim": 1.0, "fence_s": 5.0, "dummy_s": 6.0, "read_s": 7.0,
             "write_s": 7.5},
            {**base, "victim": 2.0, "fence_s": -1.0, "dummy_s": 7.0, "read_s": 8.0,
             "write_s": 9.0},
            {**base, "victim": 3.0, "fence_s": 7.0, "dummy_s": 8.0, "read_s": 9.0,
             "write_s": 9.2}]
    doc = failover.token_doc(1500, 1500, runs)
    assert doc["fence_s"] == {"p50": 6.0, "min": 5.0, "max": 7.0}  # -1: not in the history
    assert doc["corosync_token_ms"] == doc["corosync_token_running_ms"] == 1500
    assert doc["read_s"]["p50"] == 8.0 and doc["write_s"]["p50"] == 9.0
    assert doc["write_minus_read_s"] == {"p50": 0.5, "min": 0.2, "max": 1.0}
    assert "token 1500 ms" in failover.human(doc) and "write p50 9.00 s" in failover.human(doc)
    other = failover.token_doc(3000, 3000, runs[:1])
    assert failover.side_by_side([other, doc]) == (
        "failover p50 read / write by token: 3000 ms: 7.00 s / 7.50 s; "
        "1500 ms: 8.00 s / 9.00 s")


def test_watch_result_reports_a_guest_never_seen_as_missing() -> None:
    full = evacuation.watch_result(2, {"a": 9.0, "b": 11.004}, {"a": 14.0, "b": 15.0},
                                   {"a": 8.7, "b": 10.5}, None)
    assert full["all_running_s"] == 11.0 and full["all_db_active_s"] == 10.5
    assert full["complete"] and full["running_s"] == [9.0, 11.0]
    partial = evacuation.watch_result(2, {"a": 9.0}, {"a": 14.0, "b": 15.0}, None, None)
    assert partial["all_running_s"] is None and not partial["complete"]
    assert "all_db_active_s" not in partial
    no_record = evacuation.watch_result(1, {"a": 9.0}, {"a": 14.0}, {}, None)
    assert no_record["all_db_active_s"] is None and not no_record["complete"]


def test_evacuation_headlines_the_same_observer_for_both_ways() -> None:
    haven = [dict(evacuation.watch_result(1, {"a": t}, {"a": t + 4}, {"a": t - 1}, None),
                  n=20) for t in (10.0, 12.0)]
    incomplete = dict(evacuation.watch_result(1, {}, {}, {}, None), n=20)
    vd = [dict(evacuation.watch_result(1, {"v": 16.8}, {"v": 20.0}, None, None), n=20)]
    doc = evacuation.token_doc(3000, 3000, {"haven": [*haven, incomplete], "virtualdomain": vd})
    h, v = doc["summary"]["haven N=20"], doc["summary"]["virtualdomain N=20"]
    assert h["all_running_s"]["p50"] == 11.0 and h["all_db_active_s"]["p50"] == 10.0
    assert (h["complete_runs"], h["runs"]) == (2, 3)
    assert v["all_running_s"]["p50"] == 16.8 and "all_db_active_s" not in v
    assert doc["corosync_token_running_ms"] == 3000 and doc["guest_nice"] == 0
    assert evacuation.side_by_side([doc]) == [
        "evacuation N=20, token 3000 ms, every guest running again (p50): Haven 11.00 s vs "
        "VirtualDomain 16.80 s"]
    assert any("database recorded all ACTIVE p50 10.00 s" in line
               for line in evacuation.human(doc))

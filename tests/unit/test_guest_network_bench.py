"""The guest-networking bench's arithmetic: outages from the probe's log, and the
metadata load's figures (tests/bench/guest_network.py)."""

from __future__ import annotations

from tests.bench.guest_network import metadata_figures, recovery


def ev(t: float, ok: bool, last_ok: float | None = None, target: str = "ssh x") -> dict:
    return {"target": target, "t": t, "ok": ok, "last_ok": last_ok, "why": ""}


def test_the_gap_runs_from_the_last_answer_before_the_outage_to_the_first_after() -> None:
    events = [ev(1, True), ev(10.4, False, 10.3), ev(15.0, True), ev(30, False, 29.9),
              ev(31, True)]
    assert recovery(events, "ssh x", 10.0) == {"gap_s": 4.7, "from_kill_s": 5.0}


def test_a_target_still_down_has_no_figure_and_one_never_down_a_zero_gap() -> None:
    assert recovery([ev(1, True), ev(11, False, 10.9)], "ssh x", 10.0) is None
    assert recovery([ev(1, True)], "ssh x", 10.0) == {"gap_s": 0.0, "from_kill_s": 0.0}
    assert recovery([ev(1, True, target="api")], "ssh x", 10.0) is None


def test_an_outage_that_ended_before_the_kill_is_not_counted() -> None:
    events = [ev(1, True), ev(2, False, 1), ev(3, True), ev(12, False, 11.5), ev(14, True)]
    assert recovery(events, "ssh x", 10.0) == {"gap_s": 2.5, "from_kill_s": 4.0}


def test_metadata_rate_sums_each_guests_own_window_and_p99_is_of_answered_requests() -> None:
    a = "\n".join(f"{100 + i * 0.1:.2f} {100 + i * 0.1 + 0.05:.2f} ok" for i in range(10))
    b = "200.00 200.50 ok\n200.50 201.00 err\n201.00 201.00 ok\n"
    figures = metadata_figures([a, b])
    assert figures["answered"] == 12 and figures["errors"] == 1
    assert figures["requests_per_s"] == round(10 / 0.95 + 2 / 1.0, 1)
    assert figures["latency_p99_s"] == 0.5


def test_a_console_names_its_guest_once_dropbear_listens() -> None:
    from tests.bench.guest_network import console_listening

    booting = "HAVEN-TINY-BOOTED\nHAVEN-TINY-HOSTNAME r10-3\nHAVEN-TINY-KEYS 1\n"
    assert console_listening(booting) is None
    assert console_listening(booting + "HAVEN-TINY-SSH 22\n") == "r10-3"
    assert console_listening("HAVEN-TINY-SSH 22\n") is None

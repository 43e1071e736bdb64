"""The evacuator's wake-up: Pacemaker's alert agent -> abstract socket -> the pacer.

Real sockets and a real run of the alert agent (as the set-up installs it: the venv's
Python with -I -S); each test uses a socket name of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha.evacuator.wake import ENV_NAME, Pacer, WakeListener, send_wake

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agents" / "alert" / "haven-evacuator-wake"


@pytest.fixture()
def name(monkeypatch: pytest.MonkeyPatch) -> str:
    value = f"haven-test-wake-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv(ENV_NAME, value)
    return value


@pytest.fixture()
def listening(name: str) -> Iterator[Pacer]:
    pacer = Pacer(interval=30.0)
    listener = WakeListener(pacer)
    assert listener.start()
    try:
        yield pacer
    finally:
        listener.close()


def test_a_datagram_wakes_the_pacer_early(listening: Pacer) -> None:
    assert send_wake()
    assert listening.wait(time.monotonic())  # woken, not the 30 s interval


def test_a_wake_during_an_iteration_is_kept_for_the_next_wait(listening: Pacer) -> None:
    started = time.monotonic()
    send_wake()
    time.sleep(0.2)  # the iteration runs; the wake-up arrives meanwhile
    assert listening.wait(started)


def test_without_a_wake_the_pacer_sleeps_its_interval() -> None:
    pacer = Pacer(interval=0.05)
    assert not pacer.wait(time.monotonic())


def test_stop_ends_the_wait_and_says_stopping() -> None:
    pacer = Pacer(interval=30.0)
    pacer.stop()
    assert pacer.wait(time.monotonic()) and pacer.stopping


def test_nobody_listening_is_not_an_error(name: str) -> None:
    assert send_wake() is False


def test_a_second_listener_on_one_name_polls_only(listening: Pacer) -> None:
    second = WakeListener(Pacer(interval=1.0))
    assert second.start() is False


def run_agent(kind: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CRM_alert_kind=kind, CRM_alert_node="node1",
               CRM_alert_desc="lost")
    return subprocess.run([sys.executable, "-I", "-S", str(AGENT)], env=env,
                          capture_output=True, text=True, timeout=30)


def test_the_alert_agent_wakes_on_a_fence(listening: Pacer) -> None:
    result = run_agent("fencing")
    assert result.returncode == 0, result.stderr
    assert listening.wait(time.monotonic())


@pytest.mark.parametrize("kind", ["node", "resource", "attribute"])
def test_the_alert_agent_ignores_other_events_and_always_exits_0(name: str, kind: str) -> None:
    pacer = Pacer(interval=0.5)
    listener = WakeListener(pacer)
    assert listener.start()
    try:
        assert run_agent(kind).returncode == 0
        assert not pacer.wait(time.monotonic())  # nothing arrived within the interval
    finally:
        listener.close()
    assert run_agent("fencing").returncode == 0  # nobody listening: still 0

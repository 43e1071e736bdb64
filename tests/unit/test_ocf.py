"""ha.ocf logs as resource agents do (ocf_log) and never hands Pacemaker a traceback."""

from __future__ import annotations

import logging.handlers
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha.ocf import Agent, Exit, OcfError

REPO = Path(__file__).resolve().parents[2]


def agent(env: dict[str, str], handler: object, syslog: str = "/nonexistent/log") -> Agent:
    a = Agent(name="haven-test", shortdesc="test", env={"OCF_RESOURCE_INSTANCE": "res1", **env},
              syslog_address=syslog)
    a.add_action("start", handler)  # type: ignore[arg-type]
    return a


def boom() -> int:
    raise RuntimeError("the disk is on fire")


@pytest.fixture
def syslog(tmp_path: Path) -> Iterator[socket.socket]:
    """A syslog socket of our own (a unix datagram socket, as /dev/log is)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "log"))
    sock.setblocking(False)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram already delivered (a unix datagram is in the buffer once sent)."""
    got = []
    while True:
        try:
            got.append(sock.recv(65536).decode())
        except BlockingIOError:
            return got


def test_an_unexpected_exception_is_err_generic_with_an_exit_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    debuglog = tmp_path / "debug.log"
    code = agent({"HA_debug": "1", "HA_DEBUGLOG": str(debuglog)}, boom).dispatch("start")
    assert code == Exit.ERR_GENERIC
    err = capsys.readouterr().err
    assert "ocf-exit-reason:start failed unexpectedly: RuntimeError: the disk is on fire" in err
    assert "Traceback" not in err
    logged = debuglog.read_text()
    assert "Traceback" in logged and "the disk is on fire" in logged  # the debug log has it
    assert "haven-test(res1)[" in logged


def test_a_run_agent_prints_no_traceback_and_exits_1(tmp_path: Path) -> None:
    """As Pacemaker runs it: a process, its stderr and exit status."""
    script = tmp_path / "agent.py"
    script.write_text(
        "from ha.ocf import Agent\n"
        "a = Agent(name='haven-test', shortdesc='t')\n"
        "a.add_action('monitor', lambda: {}['missing'])\n"
        "a.run()\n")
    done = subprocess.run([sys.executable, str(script), "monitor"], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO),
                                                    "OCF_RESKEY_CRM_meta_interval": "10000"},
                          timeout=60)
    assert done.returncode == Exit.ERR_GENERIC
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "ocf-exit-reason:monitor failed unexpectedly: KeyError: 'missing'")


def test_ocf_errors_keep_their_code_and_reason(capsys: pytest.CaptureFixture[str]) -> None:
    def bad() -> int:
        raise OcfError(Exit.ERR_CONFIGURED, "config file /x does not exist")

    assert agent({}, bad).dispatch("start") == Exit.ERR_CONFIGURED
    assert "ocf-exit-reason:config file /x does not exist" in capsys.readouterr().err


def test_syslog_gets_the_facility_and_the_tagged_message(
        tmp_path: Path, syslog: socket.socket) -> None:
    a = agent({"HA_LOGFACILITY": "local3"}, boom, syslog=str(tmp_path / "log"))
    assert a.dispatch("start") == Exit.ERR_GENERIC
    messages = received(syslog)
    priority = (logging.handlers.SysLogHandler.LOG_LOCAL3 << 3
                | logging.handlers.SysLogHandler.LOG_ERR)
    assert any(m.startswith(f"<{priority}>haven-test(res1)[{os.getpid()}]: ERROR: start "
                            "failed unexpectedly: RuntimeError") for m in messages), messages
    assert not any("Traceback" in m for m in messages)  # debug is off: no traceback


@pytest.mark.parametrize("facility", ["none", "", " "])
def test_no_facility_means_no_syslog(tmp_path: Path, syslog: socket.socket,
                                     facility: str) -> None:
    a = agent({"HA_LOGFACILITY": facility}, boom, syslog=str(tmp_path / "log"))
    assert a.dispatch("start") == Exit.ERR_GENERIC
    assert received(syslog) == []


def test_debug_messages_only_with_ha_debug(tmp_path: Path, syslog: socket.socket) -> None:
    def chatty() -> int:
        a.log.debug("looking closely")
        a.log.info("started")
        return Exit.SUCCESS

    env = {"HA_LOGFACILITY": "daemon", "HA_LOGFILE": str(tmp_path / "ha.log")}
    a = agent(env, chatty, syslog=str(tmp_path / "log"))
    assert a.dispatch("start") == Exit.SUCCESS
    quiet = received(syslog)
    assert any("INFO: started" in m for m in quiet)
    assert not any("looking closely" in m for m in quiet)
    assert "looking closely" not in (tmp_path / "ha.log").read_text()

    a = agent({**env, "HA_debug": "1"}, chatty, syslog=str(tmp_path / "log"))
    assert a.dispatch("start") == Exit.SUCCESS
    assert any("DEBUG: looking closely" in m for m in received(syslog))
    assert "DEBUG: looking closely" in (tmp_path / "ha.log").read_text()


def test_an_unwritable_log_or_absent_syslog_does_not_fail_the_action(tmp_path: Path) -> None:
    env = {"HA_LOGFACILITY": "daemon", "HA_LOGFILE": str(tmp_path / "no" / "such" / "log")}
    assert agent(env, lambda: Exit.SUCCESS).dispatch("start") == Exit.SUCCESS

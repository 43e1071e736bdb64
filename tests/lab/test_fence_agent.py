"""fence_haven_lab against a real power-switch server whose "hardware" is a dict.

The agent runs as Pacemaker runs it (a subprocess, options on stdin, the system
Python) and as an operator does (``-o ... -n ...``); the server is the lab's own
``ha.lab.power`` code on a socket in a temporary directory, so agent and switch
are checked to speak the same protocol. No root, no namespaces: fast.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from ha.lab import config, power, state
from ha.lab.commands import wait_until

AGENT = Path(__file__).resolve().parents[2] / "agents" / "fence" / "fence_haven_lab"
# Pacemaker runs the agent by its shebang (/usr/bin/python3); use that when present.
PYTHON = shutil.which("python3", path="/usr/bin") or sys.executable


@dataclass
class FakePower:
    """The switch's hardware: which nodes are on, and the calls made, in order."""

    on: dict[str, bool] = field(default_factory=lambda: {"node1": True, "node2": True})
    calls: list[tuple[str, str]] = field(default_factory=list)

    def power_off(self, _lab: Path, name: str) -> bool:
        self.calls.append(("off", name))
        was, self.on[name] = self.on[name], False
        return was

    def power_on(self, _lab: Path, name: str) -> bool:
        self.calls.append(("on", name))
        was, self.on[name] = self.on[name], True
        return not was

    def status(self, _lab: Path, name: str) -> str:
        return "on" if self.on[name] else "off"


@dataclass
class Rig:
    lab_dir: Path
    power: FakePower

    @property
    def socket(self) -> Path:
        return self.lab_dir / state.SOCKET_FILE

    def agent(self, stdin: str | None = None, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, str(AGENT), *argv], input=stdin or "",
                              capture_output=True, text=True, timeout=30)

    def stdin(self, **options: str) -> subprocess.CompletedProcess[str]:
        options.setdefault("socket", str(self.socket))
        options.setdefault("power_timeout", "3")
        # What pacemaker-fenced writes, including keys the agent does not use.
        text = "".join(f"{k}={v}\n" for k, v in options.items()) + "nodename=node1\n"
        return self.agent(text)


def save_state(lab_dir: Path) -> None:
    plans = config.plan_nodes(2)
    state.save(state.LabState(
        lab_dir=str(lab_dir), cluster_name="c", subnet=config.DEFAULT_SUBNET,
        switch_ns="hvl-switch", bridge="br0", token_ms=3000, libvirt=False, fence_action="off",
        nodes={p.name: state.NodeState(p.name, p.nodeid, p.address, p.netns, p.veth)
               for p in plans}))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    save_state(tmp_path)
    fake = FakePower()
    # The fake never records power-off times: "on" boots at once (in the background).
    switch = power.Switch(tmp_path, off=fake.power_off, on=fake.power_on, status=fake.status)
    server = power.make_server(tmp_path, switch)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Rig(tmp_path, fake)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_metadata_is_fence_agents_shaped_xml() -> None:
    result = subprocess.run([PYTHON, str(AGENT), "-o", "metadata"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0
    root = ET.fromstring(result.stdout)
    assert root.tag == "resource-agent" and root.get("name") == "fence_haven_lab"
    params = {p.get("name"): p for p in root.iterfind("parameters/parameter")}
    assert {"action", "plug", "port", "socket", "power_timeout", "delay"} <= set(params)
    assert params["plug"].get("obsoletes") == "port" and params["plug"].get("required") == "1"
    assert params["port"].get("deprecated") == "1"
    action_content = params["action"].find("content")
    assert action_content is not None and action_content.get("default") == "reboot"
    actions = {a.get("name"): a for a in root.iterfind("actions/action")}
    assert {"on", "off", "reboot", "status", "list", "monitor", "metadata",
            "validate-all"} <= set(actions)
    assert actions["on"].get("automatic") == "0"


def test_off_from_stdin_powers_the_node_off_and_confirms_it(rig: Rig) -> None:
    result = rig.stdin(action="off", plug="node2")
    assert result.returncode == 0, result.stderr
    assert rig.power.calls == [("off", "node2")]
    assert "Success: Powered OFF" in result.stdout
    assert "nodename" not in result.stderr  # a key pacemaker passes: accepted quietly


def test_status_exit_codes_follow_fence_agents(rig: Rig) -> None:
    assert rig.stdin(action="status", plug="node1").returncode == 0  # on
    rig.power.on["node1"] = False
    result = rig.stdin(action="status", plug="node1")
    assert result.returncode == 2 and "Status: OFF" in result.stdout


def test_reboot_is_off_then_on(rig: Rig) -> None:
    result = rig.stdin(action="reboot", plug="node1")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(rig.power.calls) == 2, 10, "the boot after the reboot")
    assert rig.power.calls == [("off", "node1"), ("on", "node1")]


def test_command_line_options_and_the_port_alias(rig: Rig) -> None:
    result = rig.agent(None, "-o", "off", "-n", "node1", f"--socket={rig.socket}",
                       "--power-timeout", "3")
    assert result.returncode == 0, result.stderr
    result = rig.stdin(action="on", port="node1")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(rig.power.calls) == 2, 10, "the boot")
    assert rig.power.calls == [("off", "node1"), ("on", "node1")]


def test_on_right_after_off_waits_and_an_off_meanwhile_cancels_the_boot(tmp_path: Path,
                                                                          ) -> None:
    """A fenced node must not rejoin before the cluster recorded its fence: "on"
    answers at once and boots only after the boot delay; an "off" meanwhile means
    it never boots."""
    save_state(tmp_path)
    with state.updating(tmp_path) as st:
        st.nodes["node1"].off_since = time.time()
    fake = FakePower(on={"node1": False, "node2": True})
    switch = power.Switch(tmp_path, off=fake.power_off, on=fake.power_on, status=fake.status,
                          boot_delay=30)
    assert switch.handle({"action": "on", "node": "node1"}, "test")["changed"]
    assert switch.handle({"action": "status", "node": "node1"}, "test")["status"] == "on"
    assert fake.calls == []  # still in firmware
    assert switch.handle({"action": "off", "node": "node1"}, "test")["changed"]
    assert switch.handle({"action": "status", "node": "node1"}, "test")["status"] == "off"
    assert fake.calls == [("off", "node1")]


def test_list_monitor_and_validate(rig: Rig) -> None:
    listed = rig.stdin(action="list")
    assert listed.returncode == 0 and listed.stdout.split() == ["node1,", "node2,"]
    assert rig.stdin(action="monitor").returncode == 0
    assert rig.stdin(action="validate-all", plug="node1").returncode == 0
    assert rig.stdin(action="validate-all").returncode == 1  # no plug


def test_failures_exit_1_with_a_reason(rig: Rig) -> None:
    unknown = rig.stdin(action="off", plug="node9")
    assert unknown.returncode == 1 and "no node 'node9'" in unknown.stderr
    assert rig.power.calls == []
    assert rig.stdin(action="explode", plug="node1").returncode == 1
    nowhere = rig.stdin(action="monitor", socket=str(rig.lab_dir / "nosuch.sock"))
    assert nowhere.returncode == 1 and "Unable to connect" in nowhere.stderr
    assert rig.agent(None, "--bogus").returncode == 1


def test_switch_answers_ping_and_refuses_nonsense(rig: Rig) -> None:
    assert power.request(rig.socket, "ping")["ok"]
    assert not power.request(rig.socket, "explode", "node1")["ok"]
    assert power.request(rig.socket, "list")["nodes"] == ["node1", "node2"]


def test_a_jammed_outlet_makes_the_fence_fail_until_it_is_mended(rig: Rig) -> None:
    """How a test makes a fence fail: the agent answers failure, nothing is powered
    off; once mended, the same fence succeeds."""
    assert power.request(rig.socket, "jam", "node2") == {"ok": True, "jammed": True,
                                                          "changed": True}
    failed = rig.stdin(action="off", plug="node2")
    assert failed.returncode == 1 and "jammed" in failed.stderr
    assert rig.stdin(action="reboot", plug="node2").returncode == 1
    assert rig.power.calls == [] and rig.power.on["node2"]
    assert rig.stdin(action="status", plug="node2").returncode == 0  # still reads: on
    assert rig.stdin(action="off", plug="node1").returncode == 0  # only node2's outlet
    assert power.request(rig.socket, "unjam", "node2")["changed"]
    assert rig.stdin(action="off", plug="node2").returncode == 0
    assert rig.power.calls == [("off", "node1"), ("off", "node2")]


def test_only_the_host_jams_an_outlet(tmp_path: Path) -> None:
    save_state(tmp_path)
    switch = power.Switch(tmp_path, off=FakePower().power_off)
    refused = switch.handle({"action": "jam", "node": "node1"}, "pid 42 on node2")
    assert refused == {"ok": False, "error": "jam is for the host only"}
    assert switch.handle({"action": "jam", "node": "node1"}, "pid 42 on host")["ok"]
    assert not switch.handle({"action": "off", "node": "node1"}, "pid 43 on node2")["ok"]

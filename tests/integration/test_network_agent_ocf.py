"""``ocf:haven:haven-network-agent`` passes ``ocf-tester`` and the OCF cases.

The agent is run as Pacemaker runs it, through a wrapper like the one
appliance/setup.sh installs, but made in this test's own directory (the machine-wide
wrappers belong to whichever checkout set them up last). The whole run happens
inside a network namespace the test makes: the network agent it starts reads and
converges that namespace's (empty) networking, never the machine's. Database:
SQLite, bootstrapped; no bus (the agent polls).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ocf-tester") or not shutil.which("ip"),
    reason="needs root, iproute2 and ocf-tester (resource-agents)")

OCF_ROOT = Path("/usr/lib/ocf")
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Node:
    netns: str
    agent: Path
    config: Path
    run_dir: Path
    log_dir: Path

    def run(self, action: str, **extra: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ["PATH"], "OCF_ROOT": str(OCF_ROOT),
               "OCF_RESOURCE_INSTANCE": "test", "OCF_RESKEY_config": str(self.config),
               "OCF_RESKEY_run_dir": str(self.run_dir), "OCF_RESKEY_log_dir": str(self.log_dir),
               **extra}
        return subprocess.run(["ip", "netns", "exec", self.netns, str(self.agent), action],
                              env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture
def node() -> Iterator[Node]:
    base = Path(tempfile.mkdtemp(prefix="haven-t-netagent-ocf-"))
    base.chmod(0o755)  # dnsmasq's user passes through to the agent's run dir
    netns = f"haven-t-nocf{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    settings = {
        "state_dir": str(base / "state"),
        "log": {"level": "INFO"},
        "database": {"url": f"sqlite:///{base / 'haven.db'}"},
        "bus": {"driver": "local"},
        "compute": {"host": "ocf-net-host"},
        "network": {"agent_interval": 0.5, "agent_run_dir": str(base / "agent")},
    }
    config = base / "haven.yaml"
    config.write_text(yaml.safe_dump(settings))
    subprocess.run([str(BIN / "haven"), "bootstrap", "--config", str(config)], check=True,
                   env={**os.environ, "HAVEN_ADMIN_PASSWORD": ADMIN_PASSWORD},
                   capture_output=True)
    wrapper = base / "haven-network-agent"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" '
                       f'"{REPO / "agents" / "ocf" / "haven-network-agent"}" "$@"\n')
    wrapper.chmod(0o755)
    made = Node(netns, wrapper, config, base / "run", base / "log")
    try:
        yield made
    finally:
        made.run("stop")
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_ocf_tester_passes(node: Node) -> None:
    result = subprocess.run(
        ["ip", "netns", "exec", node.netns, "ocf-tester", "-n", "t-network-agent",
         "-o", f"config={node.config}", "-o", f"run_dir={node.run_dir}",
         "-o", f"log_dir={node.log_dir}", str(node.agent)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OCF_ROOT": str(OCF_ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed all tests" in result.stdout


def test_start_waits_for_a_round_and_monitor_checks_rounds(node: Node) -> None:
    assert node.run("monitor").returncode == 7  # probe: not running
    started = node.run("start")
    assert started.returncode == 0, started.stderr
    # start returned: a round completed after the process was spawned
    assert (node.config.parent / "state" / "network-agent.heartbeat").exists()
    assert node.run("monitor", OCF_CHECK_LEVEL="10").returncode == 0
    pid = (node.run_dir / "test.pid").read_text().strip()
    assert node.run("stop").returncode == 0
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert node.run("monitor").returncode == 7


def test_bad_config_is_err_configured_and_stop_still_succeeds(node: Node) -> None:
    bad = node.config.parent / "bad.yaml"
    bad.write_text("network:\n  agent_interval: 0\n")
    for action in ("validate-all", "start"):
        result = node.run(action, OCF_RESKEY_config=str(bad))
        assert result.returncode == 6, result.stderr
        assert "ocf-exit-reason:bad config: network.agent_interval" in result.stderr
    assert node.run("stop", OCF_RESKEY_config=str(bad)).returncode == 0


def test_meta_data_names_both_monitor_depths(node: Node) -> None:
    from xml.etree import ElementTree as ET

    result = node.run("meta-data")
    assert result.returncode == 0
    root = ET.fromstring(result.stdout.split("\n", 2)[2])
    assert root.get("name") == "haven-network-agent"
    depths = {a.get("depth") for a in root.iter("action") if a.get("name") == "monitor"}
    assert depths == {"0", "10"}

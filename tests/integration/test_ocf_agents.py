"""Haven's OCF agents against real services: ``ocf-tester``, and case tests.

Each agent is run exactly as Pacemaker runs it: the installed wrapper in
/usr/lib/ocf/resource.d/haven (made by appliance/setup.sh), parameters in
OCF_RESKEY_* variables. The services are real processes (gunicorn, the compute
agent) on a SQLite database and a throwaway RabbitMQ; the compute agent drives
libvirt's test driver here (the lab runs it on real QEMU).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ADMIN_PASSWORD, free_port
from tests.rabbitmq import RabbitMQ

OCF_ROOT = Path("/usr/lib/ocf")
AGENTS = ("haven-identity", "haven-compute-api", "haven-image", "haven-network",
          "haven-compute", "haven-evacuator")
BIN = Path(sys.executable).parent


@dataclass
class Node:
    config: Path
    run_dir: Path
    log_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "OCF_ROOT": str(OCF_ROOT),
               "OCF_RESOURCE_INSTANCE": "test", "OCF_RESKEY_config": str(self.config),
               "OCF_RESKEY_run_dir": str(self.run_dir), "OCF_RESKEY_log_dir": str(self.log_dir)}
        env.update(extra)
        return env

    def run(self, agent: str, action: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(OCF_ROOT / "resource.d" / "haven" / agent), action],
                              env=self.env(**extra), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    if not (OCF_ROOT / "resource.d" / "haven" / "haven-identity").exists():
        pytest.fail("Haven's OCF agents are not installed: run appliance/setup.sh test")
    base = tmp_path_factory.mktemp("ocf")
    broker = RabbitMQ(base / "rabbitmq")
    broker.start()
    settings = {
        "state_dir": str(base / "state"),
        "log": {"level": "WARNING"},
        "bus": {"driver": "amqp", "urls": [broker.url]},
        "compute": {"libvirt_uri": "test:///default", "host": "ocf-test-host",
                    "heartbeat_interval": 1, "listen": f"127.0.0.1:{free_port()}"},
    }
    for service in ("identity", "image", "network"):
        settings[service] = {"listen": f"127.0.0.1:{free_port()}"}
    config = base / "haven.yaml"
    config.write_text(yaml.safe_dump(settings))
    subprocess.run([str(BIN / "haven"), "bootstrap", "--config", str(config)], check=True,
                   env={**os.environ, "HAVEN_ADMIN_PASSWORD": ADMIN_PASSWORD},
                   capture_output=True)
    try:
        yield Node(config, base / "run", base / "log")
    finally:
        for agent in AGENTS:
            Node(config, base / "run", base / "log").run(agent, "stop")
        broker.close()


@pytest.mark.parametrize("agent", AGENTS)
def test_ocf_tester_passes(node: Node, agent: str) -> None:
    result = subprocess.run(
        ["ocf-tester", "-n", f"t-{agent}", "-o", f"config={node.config}",
         "-o", f"run_dir={node.run_dir}", "-o", f"log_dir={node.log_dir}",
         str(OCF_ROOT / "resource.d" / "haven" / agent)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OCF_ROOT": str(OCF_ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed all tests" in result.stdout


def gone(pid: int | str) -> bool:
    """Dead: no such process, or a zombie (reparented to an init that may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_double_start_double_stop_and_depths(node: Node) -> None:
    agent = "haven-identity"
    assert node.run(agent, "monitor").returncode == 7  # probe: not running
    assert node.run(agent, "stop").returncode == 0  # stop of a never-started service
    assert node.run(agent, "start").returncode == 0
    pid = (node.run_dir / "test.pid").read_text().strip()
    assert node.run(agent, "start").returncode == 0  # idempotent: same process
    assert (node.run_dir / "test.pid").read_text().strip() == pid
    assert node.run(agent, "monitor", OCF_CHECK_LEVEL="10").returncode == 0
    assert node.run(agent, "stop").returncode == 0
    assert gone(pid)
    assert node.run(agent, "stop").returncode == 0
    assert node.run(agent, "monitor").returncode == 7


def test_a_crashed_service_is_failed_not_just_stopped(node: Node) -> None:
    agent = "haven-image"
    assert node.run(agent, "start").returncode == 0
    pid = int((node.run_dir / "test.pid").read_text())
    os.killpg(pid, 9)
    for _ in range(50):
        if gone(pid):
            break
        time.sleep(0.1)
    recurring = node.run(agent, "monitor", OCF_RESKEY_CRM_meta_interval="10000")
    assert recurring.returncode == 1
    assert "ocf-exit-reason:" in recurring.stderr
    assert node.run(agent, "stop").returncode == 0


def test_bad_config_is_err_configured_yet_stop_succeeds(node: Node, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("identity:\n  listen: nowhere\n")
    env = {"OCF_RESKEY_config": str(bad)}
    for action in ("validate-all", "start"):
        result = node.run("haven-identity", action, **env)
        assert result.returncode == 6, result.stderr
        assert "ocf-exit-reason:bad config: identity.listen" in result.stderr
    assert node.run("haven-identity", "stop", **env).returncode == 0
    assert node.run("haven-identity", "monitor", **env).returncode == 7
    missing = node.run("haven-identity", "start", OCF_RESKEY_config="")
    assert missing.returncode == 6 and "config" in missing.stderr
    assert node.run("haven-identity", "stop", OCF_RESKEY_config="").returncode == 0


def test_missing_binary_probe_says_not_running(node: Node) -> None:
    env = {"OCF_RESKEY_binary": "/nonexistent/haven"}
    assert node.run("haven-network", "monitor", **env).returncode == 7
    result = node.run("haven-network", "validate-all", **env)
    assert result.returncode == 5 and "not installed" in result.stderr
    assert node.run("haven-network", "stop", **env).returncode == 0


def test_meta_data_is_valid_xml_with_depths(node: Node) -> None:
    from xml.etree import ElementTree as ET

    for agent in AGENTS:
        result = node.run(agent, "meta-data")
        assert result.returncode == 0
        root = ET.fromstring(result.stdout.split("\n", 2)[2])
        depths = {a.get("depth") for a in root.iter("action") if a.get("name") == "monitor"}
        assert depths == {"0", "10"}
        params = {p.get("name"): p.get("required") for p in root.iter("parameter")}
        assert params["config"] == "1"

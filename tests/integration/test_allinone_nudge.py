"""The all-in-one's network API nudges its own network agent on the all-in-one's local
bus, as a cluster's does on RabbitMQ: a security group rule deleted through the API
stops new connections to its port on a running guest at the round the nudge starts,
not ``network.agent_interval`` later.

The all-in-one runs for real inside the namespaces tests/integration/test_allinone_net.py
makes for "the machine", with ``network.agent_interval`` at its maximum, 600 s: after
the round of its start, only a nudge can start another within this test's wait. The
guest is a network namespace this test makes (``haven-t-*``) whose eth0, with the
port's MAC and address on the ``provider`` network, is the other end of the port's tap
in the machine, as QEMU's tap would be (no VM boots); the machine's host (the
provider's gateway on the outside veth) connects to it. Nothing is made in this
machine's own network namespace and no packet leaves the test's namespaces.

The port, its group and rules are made during a first run; the guest's tap appears
while the all-in-one is stopped, and the round of its second start plugs and filters
it. So setting up needs no nudge, and the deletion is the one thing that does: without
the nudge wiring the rule stays loaded for the whole wait (shorter than the interval;
a bound for a loaded machine, never a measured time).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_allinone_net import (  # noqa: F401 (the fixture)
    CLI_TIMEOUT,
    PROVIDER_CIDR,
    Machine,
    machine,
    poll,
    start_all_in_one,
)
from tests.integration.test_allinone_net import pytestmark as allinone_marks
from tests.integration.test_secgroup_enforcement import CLIENT, listen

pytestmark = allinone_marks

HOST = "aio-nudge"
INTERVAL = 600  # the most Haven takes: after the start's round only a nudge starts one
NUDGE_WAIT = 180.0  # a bound for a loaded machine, well below INTERVAL (never measured)
CUT_PORT = 32124  # its rule is deleted
KEPT_PORT = 32125  # its rule stays: the guest is still reached


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr}")
    return done


@pytest.fixture
def guest_ns() -> Iterator[str]:
    name = f"haven-t-aionudge-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def stop(m: Machine) -> None:
    assert m.proc is not None
    m.proc.send_signal(signal.SIGINT)
    assert m.proc.wait(timeout=120) == 0, m.output()


def test_a_rule_deleted_through_the_all_in_ones_api_is_applied_at_its_nudge(
        machine: Machine, guest_ns: str, tmp_path: Path) -> None:  # noqa: F811
    m = machine
    settings = [f"network.agent_interval={INTERVAL}", f"compute.host={HOST}"]
    state = tmp_path / "state"
    start_all_in_one(m, state, settings)
    group = str(m.cli_json("security", "group", "create", "web")["id"])
    cut_rule = str(m.cli_json("security", "group", "rule", "create", "--ingress",
                              "--protocol", "tcp", "--dst-port", str(CUT_PORT), group)["id"])
    m.cli("security", "group", "rule", "create", "--ingress", "--protocol", "tcp",
          "--dst-port", str(KEPT_PORT), group)
    port = m.cli_json("port", "create", "--network", "provider", "--host", HOST,
                      "--device-owner", "compute:nova", "--security-group", group, "p1")
    port_id = str(port["id"])
    fixed = port["fixed_ips"]
    assert isinstance(fixed, list) and len(fixed) == 1, fixed
    address = str(fixed[0]["ip_address"])
    stop(m)

    # the guest: eth0 in its namespace, its peer the port's tap in the machine
    tap = "tap" + port_id[:11]
    sh("ip", "-n", guest_ns, "link", "add", "eth0", "type", "veth", "peer", "name", tap,
       "netns", str(m.pid))
    assert m.run("ip", "link", "set", tap, "up").returncode == 0
    sh("ip", "-n", guest_ns, "link", "set", "eth0", "address", str(port["mac_address"]))
    sh("ip", "-n", guest_ns, "addr", "add",
       f"{address}/{PROVIDER_CIDR.split('/')[1]}", "dev", "eth0")
    for device in ("lo", "eth0"):
        sh("ip", "-n", guest_ns, "link", "set", device, "up")
    servers = [listen(guest_ns, address, p, tmp_path / f"accepted-{p}")
               for p in (CUT_PORT, KEPT_PORT)]
    try:
        start_all_in_one(m, state, settings)  # its first round plugs and filters the tap
        poll(lambda: m.cli_json("port", "show", port_id)["status"] == "ACTIVE",
             CLI_TIMEOUT, f"port {port_id} ACTIVE", m.output)

        def connects(to_port: int) -> bool:
            return m.run(sys.executable, "-c", CLIENT, address, str(to_port), "5",
                         timeout=60).returncode == 0

        def loaded() -> str:
            return m.run("nft", "list", "ruleset").stdout

        poll(lambda: connects(CUT_PORT) and connects(KEPT_PORT), CLI_TIMEOUT,
             f"the host connecting to {address}:{CUT_PORT} and :{KEPT_PORT}", m.output)
        assert f"dport {CUT_PORT}" in loaded()

        m.cli("security", "group", "rule", "delete", cut_rule)
        poll(lambda: f"dport {CUT_PORT}" not in loaded(), NUDGE_WAIT,
             f"the rule for port {CUT_PORT} gone from the machine's ruleset (the agent "
             f"was not nudged: its next round is {INTERVAL} s away)", m.output)
        assert not connects(CUT_PORT)
        assert connects(KEPT_PORT)
        assert m.cli_json("port", "show", port_id)["status"] == "ACTIVE"
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError):
                server.kill()
            server.wait()

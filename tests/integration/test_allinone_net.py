"""The all-in-one's guest networking, end to end, with real guests: DHCP, metadata, a
router to the provider network and a floating IP reached from the host.

The "machine" is a pair of namespaces the test makes (tests/privatehost.py): a network
namespace with only ``lo`` and a private mount namespace (its own ``/run``, so its
``/run/netns`` holds the routers' and networks' namespaces, and its own libvirt
daemons). ``haven all-in-one`` runs inside both, as ``make run`` runs on a machine: it
makes its outside veth with the host at the provider's gateway, its network agent
(bridges, dnsmasq, service namespaces), its routers, and its guests' taps, all there.
The test drives it with the stock ``openstack`` CLI and logs in over SSH from that
namespace ("the host"). Nothing is made in the machine's own network namespace, and no
packet leaves the test's namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.network.agent.linuxbridge import bridge_name
from core.network.localnet import FORWARD_TABLE, OUTSIDE_HOST
from tests.acceptance.helpers import BIN, TINY_CACHE
from tests.conftest import free_port
from tests.integration.tinyvm import build
from tests.privatehost import PrivateHypervisor, seed_etc

TOOLS = ("nsenter", "unshare", "ip", "nft", "dnsmasq", "ssh", "ssh-keygen", "arping",
         "libvirtd", "qemu-system-x86_64")
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)"),
    pytest.mark.skipif(any(shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") is None
                           for t in TOOLS), reason=f"needs {', '.join(TOOLS)}"),
]

PROVIDER_CIDR = "203.0.113.0/24"  # TEST-NET-3: the host at .1
HOST_ADDRESS = "203.0.113.1/24"
# Generous: two TCG guests boot on a shared, loaded machine.
BOOT_TIMEOUT = 900.0
CLI_TIMEOUT = 300.0


@dataclass
class Machine:
    """The namespaces standing in for the machine, and the all-in-one running there."""

    hv: PrivateHypervisor
    clouds: Path
    work: Path
    proc: subprocess.Popen[str] | None = None
    lines: list[str] | None = None

    @property
    def pid(self) -> int:
        pid = self.hv.pid("libvirtd")
        assert pid is not None, "the machine's libvirtd is not running"
        return pid

    def net(self, *argv: str) -> list[str]:
        """argv run in the machine's network namespace (the test's mounts)."""
        return ["nsenter", "-t", str(self.pid), "-n", "--", *argv]

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.net(*argv), capture_output=True, text=True,
                              timeout=timeout, check=False)

    def openstack(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["OS_CLIENT_CONFIG_FILE"] = str(self.clouds)
        return subprocess.run(self.net(str(BIN / "openstack"), "--os-cloud", "haven",
                                       *args), capture_output=True, text=True, env=env,
                              timeout=CLI_TIMEOUT, check=False)

    def cli(self, *args: str) -> str:
        done = self.openstack(*args)
        assert done.returncode == 0, f"openstack {' '.join(args)}: {done.stderr}"
        return done.stdout

    def cli_json(self, *args: str) -> dict[str, object]:
        out = json.loads(self.cli(*args, "-f", "json"))
        assert isinstance(out, dict)
        return out

    def output(self) -> str:
        return "".join(self.lines or [])


def start_all_in_one(m: Machine, state: Path, settings: Sequence[str] = ()) -> None:
    """``haven all-in-one`` in the machine's network and mount namespaces (the tiny
    guest built first, here: its build may fetch packages, the machine has no network)."""
    build(TINY_CACHE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "HAVEN_"))}
    socket_path = m.hv.root / "run" / "libvirt" / "libvirt-sock"
    cmd = [str(BIN / "haven"), "all-in-one", "--state-dir", str(state), "--clouds-yaml",
           str(m.clouds), "--set", f"compute.demo_image_dir={TINY_CACHE}",
           "--set", f"compute.libvirt_uri=qemu+unix:///system?socket={socket_path}",
           "--set", f"compute.instances_dir={m.work / 'instances'}",
           "--set", "compute.shutdown_timeout=10",
           "--set", f"network.provider_cidr={PROVIDER_CIDR}",
           "--set", "network.agent_interval=1"]
    for service in ("identity", "compute", "image", "network"):
        cmd += ["--set", f"{service}.listen=127.0.0.1:{free_port()}"]
    for setting in settings:
        cmd += ["--set", setting]
    m.proc = subprocess.Popen(["nsenter", "-t", str(m.pid), "-n", "-m", "--", *cmd],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env)
    m.lines = []
    ready = threading.Event()

    def read() -> None:
        assert m.proc is not None and m.proc.stdout is not None and m.lines is not None
        for line in m.proc.stdout:
            m.lines.append(line)
            if "Ctrl-C stops" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(600):
        m.proc.kill()
        raise AssertionError("all-in-one did not start:\n" + m.output())


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    # instances outside pytest's 0700 tree: QEMU runs as the QEMU user
    work = Path(tempfile.mkdtemp(prefix="haven-aionet-", dir="/var/tmp"))
    work.chmod(0o755)
    hv = PrivateHypervisor(tmp_path / "hv", seed_etc(tmp_path / "etc" / "libvirt"))
    m = Machine(hv, tmp_path / "clouds.yaml", work)
    try:
        assert m.run("ip", "link", "set", "lo", "up").returncode == 0
        yield m
    finally:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGINT)
            try:
                m.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                m.proc.kill()
        hv.stop()  # destroys the guests, stops the daemons
        for pid in processes_under(tmp_path):  # what the all-in-one left there (dnsmasq)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)


def processes_under(root: Path) -> list[int]:
    """The processes that see a mount of ``root`` (the machine's private /run and
    /etc/libvirt): every one was started in the test's machine, by this test, e.g. the
    all-in-one's dnsmasq (in a mount namespace of its own, ``ip netns exec``'s)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if str(root) in Path(f"/proc/{entry}/mountinfo").read_text():
                    out.append(int(entry))
    return out


def poll(check: Callable[[], bool], timeout: float, what: str,
         detail: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                                 f"{detail()}")
        time.sleep(2)


def tx_packets(m: Machine, device: str) -> int:
    done = m.run("ip", "-j", "-s", "link", "show", "dev", device)
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)[0]["stats64"]["tx"]["packets"])


def ssh(m: Machine, key: Path, address: str, command: str
        ) -> subprocess.CompletedProcess[str]:
    return m.run("ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", f"root@{address}",
                 command, timeout=60)


def test_allinone_guests_get_dhcp_metadata_and_a_floating_ip_reached_from_the_host(
        machine: Machine, tmp_path: Path) -> None:
    m = machine
    start_all_in_one(m, tmp_path / "state")
    assert f"the host at {HOST_ADDRESS}" in m.output(), m.output()

    # the outside: a veth of the machine, the host at the provider's gateway, and
    # nothing forwarded through it
    addr = m.run("ip", "-o", "-4", "addr", "show", "dev", OUTSIDE_HOST)
    assert HOST_ADDRESS in addr.stdout, addr
    table = m.run("nft", "list", "table", "inet", FORWARD_TABLE)
    assert table.returncode == 0 and f'iifname "{OUTSIDE_HOST}"' in table.stdout, table
    # a machine that forwards (for containers, libvirt's NAT...) and its "real" network
    for argv in (("sysctl", "-q", "-w", "net.ipv4.ip_forward=1"),
                 ("ip", "link", "add", "real0", "type", "veth", "peer", "name", "real0p"),
                 ("ip", "link", "set", "real0p", "up"),
                 ("sysctl", "-q", "-w", "net.ipv6.conf.real0.disable_ipv6=1"),
                 ("ip", "addr", "add", "198.51.100.1/24", "dev", "real0"),
                 ("ip", "link", "set", "real0", "up")):
        assert m.run(*argv).returncode == 0, argv

    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    # the README's walk-through
    m.cli("keypair", "create", "--public-key", f"{key}.pub", "mykey")
    m.cli("network", "create", "net1")
    m.cli("subnet", "create", "--network", "net1", "--subnet-range", "10.0.0.0/24", "sub1")
    m.cli("router", "create", "r1")
    m.cli("router", "set", "--external-gateway", "provider", "r1")
    m.cli("router", "add", "subnet", "r1", "sub1")
    m.cli("security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "22",
          "default")
    m.cli("server", "create", "--image", "tiny", "--flavor", "m1.tiny", "--network", "net1",
          "--key-name", "mykey", "vm1")
    m.cli("server", "create", "--image", "tiny", "--flavor", "m1.tiny", "--network",
          "provider", "--key-name", "mykey", "vm2")
    fip = str(m.cli_json("floating", "ip", "create", "provider")["floating_ip_address"])
    m.cli("server", "add", "floating", "ip", "vm1", fip)

    def address_of(server: str, network: str) -> str:
        addresses = m.cli_json("server", "show", server)["addresses"]
        assert isinstance(addresses, dict), addresses
        return str(addresses[network][0])

    def logs() -> str:
        return (m.output()[-6000:] + "\n--- vm1 console ---\n"
                + m.openstack("console", "log", "show", "vm1").stdout[-3000:]
                + "\n--- vm2 console ---\n"
                + m.openstack("console", "log", "show", "vm2").stdout[-3000:])

    # vm1: a tenant network behind the router; reached from the host at its floating
    # IP, logged in with the key it read from the metadata service
    fixed = address_of("vm1", "net1")
    result: dict[str, subprocess.CompletedProcess[str]] = {}

    def logged_in(name: str, address: str) -> Callable[[], bool]:
        def check() -> bool:
            result[name] = ssh(m, key, address, "ip -4 -o addr show; hostname")
            return result[name].returncode == 0
        return check

    poll(logged_in("vm1", fip), BOOT_TIMEOUT, f"ssh root@{fip} (vm1's floating IP)", logs)
    assert f"inet {fixed}/24" in result["vm1"].stdout, result["vm1"].stdout  # its DHCP lease
    meta = ssh(m, key, fip, "wget -qO- http://169.254.169.254/openstack/latest/"
                            "meta_data.json")
    assert meta.returncode == 0, meta.stderr
    vm1_id = str(m.cli_json("server", "show", "vm1")["id"])
    assert json.loads(meta.stdout)["uuid"] == vm1_id

    # nothing from the guests is routed onto the machine's other networks: a ping
    # beyond the host (SNATed by the router onto the outside) never leaves on real0
    sent_before = tx_packets(m, "real0")
    ping = ssh(m, key, fip, "ping -c 3 -W 1 198.51.100.2")
    assert ping.returncode != 0 and " 0% packet loss" not in ping.stdout, ping.stdout
    assert tx_packets(m, "real0") == sent_before

    # vm2: on the provider network itself, its address from the all-in-one's DHCP
    provider_ip = address_of("vm2", "provider")
    poll(logged_in("vm2", provider_ip), BOOT_TIMEOUT, f"ssh root@{provider_ip} (vm2)", logs)
    assert f"inet {provider_ip}/24" in result["vm2"].stdout, result["vm2"].stdout

    # a second start on the same state reuses the outside, the routers and the leases
    assert m.proc is not None
    m.proc.send_signal(signal.SIGINT)
    assert m.proc.wait(timeout=120) == 0, m.output()
    start_all_in_one(m, tmp_path / "state")
    addr = m.run("ip", "-o", "-4", "addr", "show", "dev", OUTSIDE_HOST)
    assert addr.stdout.count(" inet ") == 1 and HOST_ADDRESS in addr.stdout, addr
    poll(logged_in("vm1", fip), BOOT_TIMEOUT, f"ssh root@{fip} after a restart", logs)


def test_allinone_with_an_operators_uplink_makes_no_outside_of_its_own(
        machine: Machine, tmp_path: Path) -> None:
    """An uplink is explicit (the provider's physical network mapped to an interface):
    then the all-in-one adds no address, veth or forward table to the machine."""
    m = machine
    assert m.run("ip", "link", "add", "uplink0", "type", "veth", "peer", "name",
                 "uplink0p").returncode == 0
    start_all_in_one(m, tmp_path / "state", settings=[
        "network.datapath.physical_interface_mappings=[provider:uplink0]"])
    assert "'provider' is on uplink uplink0" in m.output(), m.output()
    assert m.run("ip", "link", "show", "dev", OUTSIDE_HOST).returncode != 0
    assert m.run("nft", "list", "table", "inet", FORWARD_TABLE).returncode != 0
    assert "203.0.113.1" not in m.run("ip", "-o", "addr", "show").stdout

    # a router's gateway on the provider network: the agent bridges the uplink into it
    m.cli("router", "create", "r1")
    m.cli("router", "set", "--external-gateway", "provider", "r1")
    provider = str(m.cli_json("network", "show", "provider")["id"])
    bridge = bridge_name(provider)
    poll(lambda: "uplink0" in m.run("ip", "-o", "link", "show", "master", bridge).stdout,
         CLI_TIMEOUT, f"uplink0 in {bridge}", m.output)

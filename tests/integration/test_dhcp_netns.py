"""Each hypervisor's dnsmasq, with real DHCP clients, in network namespaces this test
makes (``haven-t-*``, removed at the end); nothing is created in the machine's own
namespace and no packet leaves the machine.

A "hypervisor" is a namespace holding the network's bridge (with the host's address
on the subnet) and its dnsmasq, run by :class:`DnsmasqSupervisor`. A "guest" is a
namespace whose eth0 (the port's MAC) is a veth into that bridge, and which runs
busybox's ``udhcpc``; the client's script records what it was given. A second
hypervisor's bridge is joined to the first's by a veth: one L2 segment, as a
tenant network spanning two hypervisors is.

Every negative ("no lease") is also checked on the server side: the dnsmasq log
shows the client's DISCOVER arrived and was ignored, so a test cannot pass because
the packets never got there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.network.agent.dhcp import DhcpNetwork, DhcpPort, DhcpSubnet, FixedIp, HostRoute
from core.network.agent.dhcp_supervisor import DnsmasqSupervisor

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("busybox")
    or not os.path.exists("/usr/sbin/dnsmasq"),
    reason="needs root, iproute2, busybox and dnsmasq-base (appliance/setup.sh)")

NET = "net-a"
BRIDGE = "brqneta"
SUBNET = DhcpSubnet("sub-a", "10.20.0.0/24", "10.20.0.1", ("10.20.0.53",))
HV_ADDRESS = {"hv1": "10.20.0.2", "hv2": "10.20.0.3"}
MTU = 1450


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr}")
    return done


def wait_forwarding(ns: str, device: str) -> None:
    """Wait for the fact that the bridge forwards through ``device``: a port whose
    carrier just came up stays "disabled" until the kernel's link watch runs (up to
    a second later), and a frame sent before then is dropped."""
    deadline = time.monotonic() + 60
    while True:
        links = json.loads(sh("bridge", "-n", ns, "-j", "link", "show", "dev", device).stdout)
        if links and links[0].get("state") == "forwarding":
            return
        assert time.monotonic() < deadline, f"{ns} {device}: never forwarding ({links})"
        time.sleep(0.05)


def port(n: int, ip: str) -> DhcpPort:
    return DhcpPort(f"port-{n}", f"fa:16:3e:00:00:{n:02x}", (FixedIp(ip, SUBNET.id),),
                    f"vm{n}")


@dataclass
class Segment:
    """Two hypervisor namespaces whose bridges form one segment, and their guests."""

    tmp: Path
    prefix: str = field(default_factory=lambda: f"haven-t-{uuid.uuid4().hex[:6]}")
    made: list[str] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)
    supervisors: dict[str, DnsmasqSupervisor] = field(default_factory=dict)

    def add_ns(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def build(self) -> None:
        for host, address in HV_ADDRESS.items():
            ns = self.hosts[host] = self.add_ns(host)
            sh("ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge")
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", BRIDGE)
            sh("ip", "-n", ns, "link", "set", BRIDGE, "up")
            self.supervisors[host] = DnsmasqSupervisor(
                self.tmp / host, command_prefix=("ip", "netns", "exec", ns), log_dhcp=True)
        hv1, hv2 = self.hosts["hv1"], self.hosts["hv2"]
        sh("ip", "-n", hv1, "link", "add", "seg", "type", "veth", "peer", "name", "seg",
           "netns", hv2)
        for ns in (hv1, hv2):
            sh("ip", "-n", ns, "link", "set", "seg", "master", BRIDGE, "up")
        for ns in (hv1, hv2):
            wait_forwarding(ns, "seg")

    def guest(self, host: str, mac: str) -> str:
        """A guest on ``host`` whose eth0 has ``mac`` and no address."""
        guest = self.add_ns(f"g{len(self.made)}")
        tap = f"tap{len(self.made)}"
        sh("ip", "-n", self.hosts[host], "link", "add", tap, "type", "veth", "peer", "name",
           "eth0", "netns", guest)
        sh("ip", "-n", self.hosts[host], "link", "set", tap, "master", BRIDGE, "up")
        sh("ip", "-n", guest, "link", "set", "eth0", "address", mac, "up")
        wait_forwarding(self.hosts[host], tap)
        return guest

    def network(self, host: str, ports: tuple[DhcpPort, ...],
                subnet: DhcpSubnet = SUBNET, metadata: str | None = None) -> DhcpNetwork:
        return DhcpNetwork(NET, BRIDGE, HV_ADDRESS[host], MTU, (subnet,), ports,
                           metadata_address=metadata)

    def log(self, host: str) -> str:
        path = self.supervisors[host].log_path(NET)
        return path.read_text() if path.exists() else ""

    def remove_all(self) -> None:
        for supervisor in self.supervisors.values():
            supervisor.stop_all()
        for name in reversed(self.made):
            sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """The supervisors' files: pytest's own tmp_path is private to root, and dnsmasq,
    once it has dropped root, must still read its hosts file."""
    path = Path(tempfile.mkdtemp(prefix="haven-t-dhcp-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def segment(state_dir: Path) -> Iterator[Segment]:
    seg = Segment(state_dir)
    try:
        seg.build()
        yield seg
    finally:
        seg.remove_all()


@dataclass
class Lease:
    ip: str
    mask: str
    router: str
    dns: str
    mtu: str
    staticroutes: str
    serverid: str
    hostname: str


def client_script(tmp: Path) -> Path:
    """udhcpc's script: records each event and what came with it, and configures
    the address as a guest would (a renewal is sent from it)."""
    script = tmp / "udhcpc-script"
    if not script.exists():
        fields = " ".join(f"{f}=${f}" for f in Lease.__dataclass_fields__)
        script.write_text(
            f'#!/bin/sh\necho "$1 {fields}" >> "$EVENTS"\n'
            'case "$1" in\n'
            '  deconfig) ip addr flush dev "$interface" ;;\n'
            '  bound) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface" ;;\n'
            'esac\n')
        script.chmod(0o755)
    return script


def dhcp(guest: str, tmp: Path, tries: int = 4, wait: int = 1) -> Lease | None:
    """Run busybox udhcpc once in ``guest``: the lease it was bound with, or None
    when no server answered ``tries`` discovers, ``wait`` seconds each."""
    events = tmp / f"{guest}.events"
    script = client_script(tmp)
    events.unlink(missing_ok=True)
    done = sh("ip", "netns", "exec", guest, "env", f"EVENTS={events}", "busybox", "udhcpc",
              "-f", "-q", "-n", "-t", str(tries), "-T", str(wait), "-i", "eth0", "-s", str(script),
              "-O", "mtu", "-O", "staticroutes", check=False)
    bound = [line for line in (events.read_text().splitlines() if events.exists() else [])
             if line.startswith("bound ")]
    if done.returncode != 0:
        assert not bound, f"udhcpc failed yet bound: {bound}"
        return None
    assert len(bound) == 1, (done.stdout, done.stderr, bound)
    values = dict(re.findall(r"(\w+)=(.*?)(?= \w+=|$)", bound[0][len("bound "):]))
    return Lease(**values)


def no_lease(guest: str, tmp: Path) -> bool:
    """No server gives ``guest`` a lease, asked patiently: a dnsmasq handing out a
    pool address pings it first (seconds) before it offers."""
    return dhcp(guest, tmp, tries=2, wait=5) is None


def ignored(log: str, mac: str) -> bool:
    """The server saw ``mac``'s DISCOVER and ignored it."""
    return re.search(rf"DHCPDISCOVER\({BRIDGE}\) {mac} ignored", log) is not None


def wait_reread(seg: Segment, host: str, before: int) -> None:
    """Wait for the fact that dnsmasq re-read its hosts file after a HUP (its log
    says so), not for a time."""
    deadline = time.monotonic() + 60
    while seg.log(host).count("/hosts\n") <= before:
        assert time.monotonic() < deadline, "dnsmasq never re-read its hosts file"
        time.sleep(0.05)


def test_each_port_gets_exactly_its_address_mtu_and_router(segment: Segment,
                                                           tmp_path: Path) -> None:
    p1, p2 = port(1, "10.20.0.11"), port(2, "10.20.0.12")
    g1, g2 = segment.guest("hv1", p1.mac_address), segment.guest("hv1", p2.mac_address)
    result = segment.supervisors["hv1"].sync([segment.network("hv1", (p1, p2))])
    assert result.started == [NET] and not result.refused

    for guest, p in ((g1, p1), (g2, p2)):
        lease = dhcp(guest, tmp_path)
        assert lease is not None, segment.log("hv1")
        assert (lease.ip, lease.mask, lease.router, lease.dns, lease.mtu, lease.hostname) == (
            p.fixed_ips[0].ip_address, "24", "10.20.0.1", "10.20.0.53", str(MTU), p.hostname)
        assert lease.serverid == HV_ADDRESS["hv1"]
        assert lease.staticroutes == ""  # a gateway, no host routes: option 3 is enough

    d = segment.supervisors["hv1"].network_dir(NET)
    for name in ("dnsmasq.conf", "hosts", "opts"):
        assert (d / name).stat().st_mode & 0o777 == 0o640, name
    # the daemon dropped root for dnsmasq's own user
    pid = segment.supervisors["hv1"].running_pid(NET)
    assert pid is not None
    uid = int(Path(f"/proc/{pid}/status").read_text().split("\nUid:")[1].split()[0])
    assert uid != 0


def test_no_gateway_gets_metadata_route_and_host_routes_keep_the_default(
        segment: Segment, tmp_path: Path) -> None:
    isolated = DhcpSubnet("sub-a", "10.20.0.0/24", None, ())
    p1 = port(1, "10.20.0.11")
    g1 = segment.guest("hv1", p1.mac_address)
    sup = segment.supervisors["hv1"]
    sup.sync([segment.network("hv1", (p1,), isolated, metadata=HV_ADDRESS["hv1"])])
    lease = dhcp(g1, tmp_path)
    assert lease is not None
    assert lease.router == ""  # not dnsmasq's own address: there is no router
    assert lease.staticroutes == f"169.254.169.254/32 {HV_ADDRESS['hv1']}"

    routed = DhcpSubnet("sub-a", "10.20.0.0/24", "10.20.0.1", (),
                        (HostRoute("192.0.2.0/24", "10.20.0.254"),))
    assert sup.sync([segment.network("hv1", (p1,), routed)]).reloaded == [NET]
    lease = dhcp(g1, tmp_path)
    assert lease is not None
    assert lease.staticroutes == "192.0.2.0/24 10.20.0.254 0.0.0.0/0 10.20.0.1"


def test_unknown_mac_gets_no_lease(segment: Segment, tmp_path: Path) -> None:
    p1 = port(1, "10.20.0.11")
    stranger = "fa:16:3e:00:00:99"
    g1 = segment.guest("hv1", p1.mac_address)
    g9 = segment.guest("hv1", stranger)
    segment.supervisors["hv1"].sync([segment.network("hv1", (p1,))])
    assert no_lease(g9, tmp_path)
    assert ignored(segment.log("hv1"), stranger), segment.log("hv1")
    assert dhcp(g1, tmp_path) is not None  # the server was answering all along


def test_added_port_is_a_reload_removed_one_is_no_longer_answered_and_its_address_moves(
        segment: Segment, tmp_path: Path) -> None:
    p1, p2 = port(1, "10.20.0.11"), port(2, "10.20.0.12")
    g1, g2 = segment.guest("hv1", p1.mac_address), segment.guest("hv1", p2.mac_address)
    sup = segment.supervisors["hv1"]
    sup.sync([segment.network("hv1", (p1, p2))])
    assert dhcp(g1, tmp_path) is not None
    pid = sup.running_pid(NET)

    # a port added: a rewrite and a HUP, the same dnsmasq answers it
    p4 = port(4, "10.20.0.14")
    g4 = segment.guest("hv1", p4.mac_address)
    before = segment.log("hv1").count("/hosts\n")
    assert sup.sync([segment.network("hv1", (p1, p2, p4))]).reloaded == [NET]
    wait_reread(segment, "hv1", before)
    assert sup.running_pid(NET) == pid
    lease = dhcp(g4, tmp_path)
    assert lease is not None and lease.ip == "10.20.0.14"

    # p1 deleted, its address given to a new port p3 (another MAC): the old lease
    # must not keep the address from p3
    p3 = DhcpPort("port-3", "fa:16:3e:00:00:03", p1.fixed_ips, "vm3")
    g3 = segment.guest("hv1", p3.mac_address)
    assert sup.sync([segment.network("hv1", (p2, p3, p4))]).restarted == [NET]
    assert no_lease(g1, tmp_path)
    assert ignored(segment.log("hv1"), p1.mac_address)
    lease = dhcp(g3, tmp_path)
    assert lease is not None and lease.ip == "10.20.0.11", segment.log("hv1")
    for guest, ip in ((g2, "10.20.0.12"), (g4, "10.20.0.14")):
        lease = dhcp(guest, tmp_path)
        assert lease is not None and lease.ip == ip


def test_a_restart_keeps_the_other_guests_renewing(segment: Segment,
                                                  tmp_path: Path) -> None:
    """Removing a port restarts dnsmasq (its in-memory leases go): a guest that
    keeps its port renews with the new process and keeps its address."""
    p1, p2 = port(1, "10.20.0.11"), port(2, "10.20.0.12")
    g2 = segment.guest("hv1", p2.mac_address)
    sup = segment.supervisors["hv1"]
    sup.sync([segment.network("hv1", (p1, p2))])
    events = tmp_path / "renewing.events"
    client = subprocess.Popen(
        ["ip", "netns", "exec", g2, "env", f"EVENTS={events}", "busybox", "udhcpc", "-f",
         "-i", "eth0", "-s", str(client_script(tmp_path)), "-O", "mtu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def seen() -> list[str]:
            text = events.read_text() if events.exists() else ""
            return [line.split()[0] for line in text.splitlines()]

        deadline = time.monotonic() + 60
        while "bound" not in seen():
            assert time.monotonic() < deadline and client.poll() is None, seen()
            time.sleep(0.05)
        old_pid = sup.running_pid(NET)
        assert sup.sync([segment.network("hv1", (p2,))]).restarted == [NET]
        assert sup.running_pid(NET) != old_pid
        client.send_signal(signal.SIGUSR1)  # renew now (unicast to the server)
        while not {"renew", "nak", "leasefail"} & set(seen()):
            assert time.monotonic() < deadline + 60 and client.poll() is None, seen()
            time.sleep(0.05)
        assert seen()[-1] == "renew", (seen(), segment.log("hv1"))
        renewed = events.read_text().splitlines()[-1]
        assert " ip=10.20.0.12 " in renewed
        log = segment.log("hv1")
        assert "DHCPNAK" not in log
        assert f"DHCPACK({BRIDGE}) 10.20.0.12 {p2.mac_address}" in log.split(
            "started, version")[-1]  # answered by the new process
    finally:
        client.terminate()
        client.wait()


def test_other_hypervisor_answers_only_its_own_ports(segment: Segment,
                                                     tmp_path: Path) -> None:
    p1, p2 = port(1, "10.20.0.11"), port(2, "10.20.0.12")
    g1, g2 = segment.guest("hv1", p1.mac_address), segment.guest("hv2", p2.mac_address)
    segment.supervisors["hv1"].sync([segment.network("hv1", (p1,))])
    segment.supervisors["hv2"].sync([segment.network("hv2", (p2,))])

    for guest, p, host in ((g1, p1, "hv1"), (g2, p2, "hv2")):
        lease = dhcp(guest, tmp_path)
        assert lease is not None
        assert (lease.ip, lease.serverid) == (p.fixed_ips[0].ip_address, HV_ADDRESS[host])
    # each saw the other's guest (one segment) and neither offered nor refused it:
    # an authoritative server NAKs a REQUEST meant for another ("wrong server-ID")
    for host, other in (("hv1", p2), ("hv2", p1)):
        log = segment.log(host)
        assert ignored(log, other.mac_address), log
        assert "DHCPNAK" not in log and f"DHCPOFFER({BRIDGE}) " + \
            other.fixed_ips[0].ip_address not in log, log

    # hv1's DHCP gone: hv2 still does not answer hv1's port
    segment.supervisors["hv1"].sync([])
    assert segment.supervisors["hv1"].running_pid(NET) is None
    assert no_lease(g1, tmp_path)
    assert "DHCPNAK" not in segment.log("hv2")


def test_a_dead_dnsmasq_is_restarted_by_the_next_sync(segment: Segment,
                                                      tmp_path: Path) -> None:
    p1 = port(1, "10.20.0.11")
    g1 = segment.guest("hv1", p1.mac_address)
    sup = segment.supervisors["hv1"]
    desired = [segment.network("hv1", (p1,))]
    sup.sync(desired)
    assert sup.sync(desired).unchanged == [NET]
    pid = sup.running_pid(NET)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    while sup.running_pid(NET) is not None:
        time.sleep(0.05)
    assert sup.sync(desired).started == [NET]
    assert dhcp(g1, tmp_path) is not None

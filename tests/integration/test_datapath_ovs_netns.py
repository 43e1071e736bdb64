"""The Open vSwitch data path on real devices: the Linux bridge module's connectivity
tests (tests/integration/test_datapath_netns.py, whose helpers this reuses) against
:class:`OpenVSwitchDriver`.

Each fake hypervisor is a network namespace running its own ovsdb-server and
ovs-vswitchd (database, sockets, pid and log files in a directory of this test's,
both stopped at the end) with the userspace datapath (``netdev``: the machine has no
openvswitch kernel module). Userspace VXLAN sends through OVS's own routing, so each
host's underlay veth is a port of an OVS bridge ``br-ul`` that holds the VTEP address
(the host's setup, as the OVS userspace-tunneling guide lays it out; the driver
only manages ``br-int``). Nothing is made in the machine's own namespace and no
packet leaves the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.common.hostnet import tap_name
from core.network.agent.openvswitch import OvsHostConfig, tunnel_port_name
from core.network.agent.ovsctl import OpenVSwitchDriver, OvsCtl
from tests.conftest import Services
from tests.integration.segments_cloud import segments_cloud
from tests.integration.test_datapath_netns import (
    PHYSNET,
    VTEPS,
    Hypervisors,
    Namespaces,
    assert_isolated,
    bound_port,
    network,
    reaches,
    sh,
    sync_all,
    two_tenants,
    unreachable,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("ovs-vswitchd"),
    reason="needs root, iproute2 and Open vSwitch (appliance/setup.sh installs it)")

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


@dataclass
class Switch:
    """One namespace's ovsdb-server and ovs-vswitchd."""

    netns: str
    rundir: Path

    @property
    def db(self) -> str:
        return f"unix:{self.rundir / 'db.sock'}"

    def ctl(self) -> OvsCtl:
        return OvsCtl(self.db, str(self.rundir), self.netns)

    def vsctl(self, *args: str) -> str:
        return sh("ovs-vsctl", f"--db={self.db}", *args).stdout

    def ofctl(self, *args: str) -> str:
        env = {**os.environ, "OVS_RUNDIR": str(self.rundir)}
        done = subprocess.run(["ovs-ofctl", *args], capture_output=True, text=True,
                              check=False, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self) -> None:
        d = self.rundir
        sh("ovsdb-tool", "create", str(d / "conf.db"), SCHEMA)
        common = ["-vconsole:off", "--detach", "--no-chdir"]
        sh("ip", "netns", "exec", self.netns, "ovsdb-server", str(d / "conf.db"),
           f"--remote=punix:{d / 'db.sock'}", f"--pidfile={d / 'ovsdb-server.pid'}",
           f"--unixctl={d / 'ovsdb-server.ctl'}", f"--log-file={d / 'ovsdb-server.log'}",
           *common)
        self.vsctl("--no-wait", "init")
        sh("env", f"OVS_RUNDIR={d}", "ip", "netns", "exec", self.netns, "ovs-vswitchd",
           self.db, f"--pidfile={d / 'ovs-vswitchd.pid'}",
           f"--unixctl={d / 'ovs-vswitchd.ctl'}", f"--log-file={d / 'ovs-vswitchd.log'}",
           *common)

    def stop(self) -> None:
        """Stop the two daemons this test started (by their pid files)."""
        for daemon in ("ovs-vswitchd", "ovsdb-server"):
            pidfile = self.rundir / f"{daemon}.pid"
            with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


@dataclass
class OvsHypervisors(Hypervisors):
    switches: dict[str, Switch]

    def driver(self, host: str) -> OpenVSwitchDriver:  # type: ignore[override]
        return OpenVSwitchDriver(OvsHostConfig(VTEPS[host], PHYSNET, "netdev"),
                                 self.switches[host].ctl())

    def guest(self, host: str, port: dict[str, object], address: str) -> str:
        """As the Linux bridge test's, and the tap up: the hypervisor does it (libvirt,
        os-vif); OVS does not set a system port's link state."""
        guest = super().guest(host, port, address)
        sh("ip", "-n", self.hosts[host], "link", "set", tap_name(str(port["id"])), "up")
        return guest


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Services]:
    with segments_cloud(tmp_path, f"sqlite:///{tmp_path / 'haven.db'}",
                        network_vlan_ranges=["physnet1:100:199"]) as services:
        yield services


@pytest.fixture
def hypervisors() -> Iterator[OvsHypervisors]:
    ns = Namespaces()
    # short: the unix socket paths must fit in 108 bytes
    base = Path(tempfile.mkdtemp(prefix="hovs-"))
    switches: dict[str, Switch] = {}
    try:
        hosts = {h: ns.add(h) for h in VTEPS}
        hv1, hv2 = hosts["hv1"], hosts["hv2"]
        for link in ("und", "phys"):
            sh("ip", "-n", hv1, "link", "add", link, "type", "veth", "peer", "name", link,
               "netns", hv2)
        for host, ns_name in hosts.items():
            rundir = base / host
            rundir.mkdir()
            switch = switches[host] = Switch(ns_name, rundir)
            switch.start()
            for link in ("und", "phys"):
                sh("ip", "-n", ns_name, "link", "set", link, "mtu", "1500", "up")
            switch.vsctl("add-br", "br-ul", "--", "set", "bridge", "br-ul",
                         "datapath_type=netdev", "--", "add-port", "br-ul", "und")
            sh("ip", "-n", ns_name, "addr", "add", f"{VTEPS[host]}/24", "dev", "br-ul")
            sh("ip", "-n", ns_name, "link", "set", "br-ul", "up")
        yield OvsHypervisors(ns, hosts, switches)
    finally:
        for switch in switches.values():
            switch.stop()
        ns.remove_all()
        shutil.rmtree(base, ignore_errors=True)


def test_vxlan_tenants_reach_their_own_and_never_the_other(
        cloud: Services, hypervisors: OvsHypervisors) -> None:
    guests = two_tenants(cloud, hypervisors)
    assert_isolated(guests)
    observed = hypervisors.switches["hv1"].ctl().observe()
    taps = [p for name, p in observed.ports.items() if name.startswith("tap")]
    assert len(taps) == 2 and {p.mtu_request for p in taps} == {1450}, taps
    assert len({p.tag for p in taps}) == 2  # a local tag per network
    assert set(observed.ports) == {"br-int", *(p.name for p in taps),
                                   tunnel_port_name(VTEPS["hv2"])}
    assert reaches(guests["a1"], "10.0.0.12", size=1450 - 28)
    assert unreachable(guests["a1"], "10.0.0.12", size=1450 - 28 + 1)
    assert reaches(guests["a1"], "10.0.0.12")


def test_a_deleted_port_is_unplugged_and_its_network_removed(
        cloud: Services, hypervisors: OvsHypervisors) -> None:
    guests = two_tenants(cloud, hypervisors)
    ports = cloud.call("GET", "network", "/v2.0/ports?binding:host_id=hv2").json()["ports"]
    for port in ports:
        assert cloud.call("DELETE", "network", f"/v2.0/ports/{port['id']}").status_code == 204
    sync_all(cloud, hypervisors)
    assert unreachable(guests["a1"], "10.0.0.12")
    hv2 = hypervisors.switches["hv2"].ctl().observe()
    assert set(hv2.ports) == {"br-int"}, hv2.ports
    assert [f.actions for f in hv2.flows] == ["drop"], hv2.flows
    hv1 = hypervisors.switches["hv1"].ctl().observe()
    assert not [n for n in hv1.ports if n.startswith("vx")], hv1.ports  # nobody to flood to
    assert not [f for f in hv1.flows if "TUN_ID" in f.actions or "tun_id" in str(f.match)]
    # the taps on hv2 are detached, never deleted: they are the hypervisor's
    assert {tap_name(str(p["id"])) for p in ports} <= hv2.devices


def test_a_flat_network_rides_the_physical_link_itself(
        cloud: Services, hypervisors: OvsHypervisors) -> None:
    flat = network(cloud, **{"provider:network_type": "flat",
                             "provider:physical_network": "physnet1"})
    tenant = network(cloud, cloud.member("tf", "tf-user"))
    guests = {name: hypervisors.guest(host, bound_port(cloud, net, host), address)
              for name, net, host, address in (("f1", flat, "hv1", "10.0.0.11"),
                                                ("f2", flat, "hv2", "10.0.0.12"),
                                                ("t1", tenant, "hv1", "10.0.0.21"),
                                                ("t2", tenant, "hv2", "10.0.0.22"))}
    sync_all(cloud, hypervisors)
    assert reaches(guests["f1"], "10.0.0.12", size=1500 - 28)
    assert reaches(guests["t1"], "10.0.0.22")
    for address in ("10.0.0.11", "10.0.0.12"):
        assert unreachable(guests["t1"], address) and unreachable(guests["t2"], address)
    assert "phys" in hypervisors.switches["hv1"].ctl().observe().ports
    ports = cloud.call("GET", "network", f"/v2.0/ports?network_id={flat['id']}").json()
    for port in ports["ports"]:
        assert cloud.call("DELETE", "network", f"/v2.0/ports/{port['id']}").status_code == 204
    sync_all(cloud, hypervisors)
    for switch in hypervisors.switches.values():
        observed = switch.ctl().observe()
        assert "phys" not in observed.ports and "phys" in observed.devices
    assert reaches(guests["t1"], "10.0.0.22")  # the other network is untouched


def test_sync_repairs_a_host_that_drifted(cloud: Services,
                                          hypervisors: OvsHypervisors) -> None:
    """A tap off br-int, a foreign flow that would join the two tenants, a wrong MTU, a
    tunnel port gone: one sync puts it back, the next plans nothing."""
    guests = two_tenants(cloud, hypervisors)
    switch = hypervisors.switches["hv1"]
    observed = switch.ctl().observe()
    taps = sorted(n for n in observed.ports if n.startswith("tap"))
    tags = sorted({observed.ports[t].tag or 0 for t in taps})
    switch.vsctl("del-port", "br-int", taps[0])
    switch.vsctl("set", "interface", taps[1], "mtu_request=1400")
    switch.vsctl("del-port", "br-int", tunnel_port_name(VTEPS["hv2"]))
    switch.ofctl("add-flow", "br-int",
                 f"table=1,priority=30,reg0={tags[0]:#x} actions=load:{tags[1]:#x}"
                 "->NXM_NX_REG0[],resubmit(,2)")
    sync_all(cloud, hypervisors)  # asserts the second sync plans nothing
    repaired = switch.ctl().observe()
    assert {repaired.ports[t].mtu_request for t in taps} == {1450}
    assert not [f for f in repaired.flows if f.priority == 30]
    assert sorted({repaired.ports[t].tag or 0 for t in taps}) == tags  # stable tags
    assert_isolated(guests)

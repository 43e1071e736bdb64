"""The dnsmasq configuration of one network on one hypervisor (core/network/agent/dhcp.py).

What a guest is actually given is checked by real clients in
tests/integration/test_dhcp_netns.py; here, the files line by line and every
refusal.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from core.network.agent.dhcp import (
    DhcpConfigError,
    DhcpNetwork,
    DhcpPort,
    DhcpSubnet,
    FixedIp,
    HostRoute,
    RenderedConfig,
    render,
)
from core.network.agent.dhcp_supervisor import DhcpStateDirError, DnsmasqSupervisor, _withdrawn

SUB = DhcpSubnet("s1", "10.0.0.0/24", "10.0.0.1", ("10.0.0.53", "192.0.2.53"))
V6 = "s6"


def port(n: int, ip: str, subnet: str = "s1", hostname: str | None = None) -> DhcpPort:
    return DhcpPort(f"p{n}", f"FA:16:3E:00:00:{n:02X}", (FixedIp(ip, subnet),),
                    hostname or f"vm{n}")


def net(*ports: DhcpPort, **kw: object) -> DhcpNetwork:
    base = DhcpNetwork("n1", "brqn1", "10.0.0.2", 1450, (SUB,), tuple(ports))
    return replace(base, **kw)  # type: ignore[arg-type]


def rendered(network: DhcpNetwork) -> RenderedConfig:
    return render(network, hosts_path="/s/n1/hosts", opts_path="/s/n1/opts",
                  pid_path="/s/n1/pid", user="dnsmasq", group="nogroup")


def test_static_hosts_only_for_this_hosts_ports() -> None:
    out = rendered(net(port(1, "10.0.0.11"), port(2, "10.0.0.12")))
    conf = out.conf.splitlines()
    assert "dhcp-range=set:subnet0,10.0.0.0,static,255.255.255.0,86400s" in conf
    assert [c for c in conf if c.startswith("dhcp-range")] == [
        "dhcp-range=set:subnet0,10.0.0.0,static,255.255.255.0,86400s"]  # no pool
    for line in ("port=0", "interface=brqn1", "bind-interfaces", "dhcp-authoritative",
                 "dhcp-ignore=tag:!known", "leasefile-ro", "user=dnsmasq", "group=nogroup",
                 "dhcp-hostsfile=/s/n1/hosts", "dhcp-optsfile=/s/n1/opts",
                 "pid-file=/s/n1/pid", "no-resolv", "no-hosts"):
        assert line in conf, line
    assert not any(c.startswith("dhcp-leasefile") for c in conf)
    # MACs lower-cased (dnsmasq compares them as given)
    assert out.hosts == "fa:16:3e:00:00:01,10.0.0.11,vm1\nfa:16:3e:00:00:02,10.0.0.12,vm2\n"
    assert out.hosts_for == {"fa:16:3e:00:00:01": "10.0.0.11",
                             "fa:16:3e:00:00:02": "10.0.0.12"}


def test_options_router_dns_mtu() -> None:
    opts = rendered(net(port(1, "10.0.0.11"))).opts.splitlines()
    assert opts == ["tag:subnet0,option:router,10.0.0.1",
                    "tag:subnet0,option:dns-server,10.0.0.53,192.0.2.53",
                    "tag:subnet0,option:mtu,1450"]


def test_no_gateway_empty_router_and_metadata_route_via_the_host() -> None:
    isolated = DhcpSubnet("s1", "10.0.0.0/24", None, ())
    opts = rendered(net(subnets=(isolated,), metadata_address="10.0.0.2")).opts.splitlines()
    # an empty option 3: otherwise dnsmasq offers its own address as the router
    assert "tag:subnet0,option:router" in opts
    assert not any("dns-server" in o for o in opts)  # none given: no option 6
    assert "tag:subnet0,option:classless-static-route,169.254.169.254/32,10.0.0.2" in opts
    assert "tag:subnet0,249,169.254.169.254/32,10.0.0.2" in opts


def test_gateway_no_metadata_route_unless_forced() -> None:
    opts = rendered(net(metadata_address="10.0.0.2")).opts
    assert "classless" not in opts
    forced = rendered(net(metadata_address="10.0.0.2", force_metadata=True)).opts
    # option 121 replaces option 3 for the clients that take it: the default is in it
    assert ("option:classless-static-route,169.254.169.254/32,10.0.0.2,0.0.0.0/0,10.0.0.1"
            in forced)


def test_host_routes_carry_the_default_route() -> None:
    routed = replace(SUB, host_routes=(HostRoute("192.0.2.0/24", "10.0.0.254"),))
    opts = rendered(net(subnets=(routed,))).opts
    assert "option:classless-static-route,192.0.2.0/24,10.0.0.254,0.0.0.0/0,10.0.0.1" in opts


def test_mtu_unknown_sends_none() -> None:
    assert "mtu" not in rendered(net(mtu=None)).opts


def test_two_subnets_each_with_its_tag() -> None:
    other = DhcpSubnet("s2", "10.1.0.0/24", "10.1.0.1")
    out = rendered(net(port(1, "10.0.0.11"), port(2, "10.1.0.12", "s2"),
                       subnets=(SUB, other)))
    assert "dhcp-range=set:subnet1,10.1.0.0,static,255.255.255.0,86400s" in out.conf
    assert "tag:subnet1,option:router,10.1.0.1" in out.opts
    assert "fa:16:3e:00:00:02,10.1.0.12,vm2" in out.hosts


def test_port_without_a_served_address_is_left_out() -> None:
    v6only = DhcpPort("p9", "fa:16:3e:00:00:09", (FixedIp("2001:db8::9", V6),), "vm9")
    assert rendered(net(v6only)).hosts == ""


@pytest.mark.parametrize(("network", "names"), [
    (net(port(1, "10.0.0.11"), port(2, "10.0.0.11")), "10.0.0.11 is also port p1's"),
    (net(port(1, "10.0.0.11"), replace(port(1, "10.0.0.12"), id="p2")), "MAC"),
    (net(port(1, "10.9.0.11")), "not in subnet s1"),
    (net(port(1, "10.0.0.2")), "server_address 10.0.0.2 is also a port's"),
    (net(port(1, "10.0.0.11", hostname="vm1,10.0.0.99")), "hostname"),
    (net(port(1, "10.0.0.11", hostname="vm1\ndhcp-range=10.0.0.0,10.0.0.9")), "hostname"),
    (net(replace(port(1, "10.0.0.11"), mac_address="fa:16:3e:00:00")), "mac_address"),
    (net(server_address="10.9.0.2"), "server_address"),
    (net(interface="br0\ndhcp-range=x"), "interface"),
    (net(subnets=()), "no IPv4 subnet"),
    (net(subnets=(DhcpSubnet("s6", "2001:db8::/64"),)), "not IPv4"),
    (net(subnets=(SUB, DhcpSubnet("s2", "10.0.0.128/25"))), "overlaps"),
    (net(subnets=(replace(SUB, gateway_ip="10.9.0.1"),)), "gateway_ip"),
    (net(subnets=(replace(SUB, dns_nameservers=("x,y",)),)), "dns_nameservers"),
    (net(mtu=20), "mtu"),
    (net(lease_seconds=60), "lease_seconds"),
])
def test_refusals_name_the_field(network: DhcpNetwork, names: str) -> None:
    with pytest.raises(DhcpConfigError, match=names.replace(".", r"\.")):
        rendered(network)


def test_withdrawn_is_a_mac_losing_its_address() -> None:
    old = "fa:16:3e:00:00:01,10.0.0.11,vm1\nfa:16:3e:00:00:02,10.0.0.12\n"
    keep = {"fa:16:3e:00:00:01": "10.0.0.11", "fa:16:3e:00:00:02": "10.0.0.12"}
    assert not _withdrawn(old, keep)
    assert not _withdrawn(old, {**keep, "fa:16:3e:00:00:03": "10.0.0.13"})  # added
    assert _withdrawn(old, {"fa:16:3e:00:00:01": "10.0.0.11"})  # removed
    assert _withdrawn(old, {**keep, "fa:16:3e:00:00:02": "10.0.0.22"})  # moved
    assert _withdrawn("garbage\n", keep)


@pytest.mark.skipif(os.geteuid() != 0, reason="chowns files to dnsmasq's group")
def test_refused_network_gets_no_dnsmasq_and_a_failed_start_is_reported() -> None:
    top = Path(tempfile.mkdtemp(prefix="haven-t-dhcp-"))  # pytest's tmp is root's only
    top.chmod(0o755)
    try:
        _refusals(top / "state")
    finally:
        shutil.rmtree(top)


def _refusals(state: Path) -> None:
    sup = DnsmasqSupervisor(state, binary="/bin/false")
    bad = net(port(1, "10.0.0.11"), port(2, "10.0.0.11"))
    result = sup.sync([bad])
    assert "n1" in result.refused and "also port p1's" in result.refused["n1"]
    assert not (state / "n1").exists()
    # a dnsmasq that does not start is reported, not raised past the others
    result = sup.sync([net(port(1, "10.0.0.11"))])
    assert "n1" in result.refused and "exited 1" in result.refused["n1"]


def test_state_dir_dnsmasq_cannot_reach_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    sup = DnsmasqSupervisor(private / "state", user="nobody" if os.geteuid() else "dnsmasq",
                            binary="/bin/false")
    with pytest.raises(DhcpStateDirError, match="does not let user"):
        sup.sync([])

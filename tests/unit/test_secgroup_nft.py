"""The security group compiler: what each rule becomes, anti-spoofing, remote-group sets,
and that the kernel's own parser accepts the result (``nft -c`` in a throwaway network
namespace, where nftables is installed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence

import pytest

from core.common.faults import BadRequest
from core.common.hostnet import tap_name
from core.network.agent.secgroup_apply import SYSCTLS, ApplyError, NftApplier, run_local
from core.network.agent.secgroup_nft import (
    CompileError,
    GuestPort,
    HostPorts,
    Rule,
    compile_ruleset,
    link_local,
    set_names,
    set_update,
)
from core.network.agent.secgroup_source import host_ports, members
from core.network.secgroup_rules import default_rules, parse_rule, spec_key

GROUP = "6f1c1d2e-0000-4000-8000-00000000abcd"


def port(tap: str = "tapaaaaaaaaaaa", mac: str = "fa:16:3e:00:00:01",
         ips: tuple[str, ...] = ("10.0.0.5",), *rules: Rule) -> GuestPort:
    return GuestPort(f"id-{tap}", tap, mac, ips, tuple(rules))


def chain(script: str, name: str) -> list[str]:
    lines = script.splitlines()
    start = lines.index(f"  chain {name} {{")
    end = lines.index("  }", start)
    return [line.strip() for line in lines[start + 1:end] if not line.strip().startswith("#")]


def test_ingress_is_denied_unless_a_rule_says_so() -> None:
    script = compile_ruleset(HostPorts((port(),)))
    assert chain(script, "ingress_1")[-1] == "drop"
    assert not [line for line in chain(script, "ingress_1")
                if line.endswith("accept") and "dport 68" not in line and "546" not in line
                and "icmpv6 type" not in line]
    guest = chain(script, "guest")
    assert guest[:3] == ["meta mark & 0xff000000 != 0x5a000000 accept",
                         "ct state established,related accept", "ct state invalid drop"]


def test_rules_become_matches() -> None:
    rules = (Rule("ingress", "IPv4", "tcp", 22, 22, "0.0.0.0/0"),
             Rule("ingress", "IPv4", "udp", 1000, 2000, "192.0.2.0/24"),
             Rule("ingress", "IPv4", "icmp", 8, 0),
             Rule("ingress", "IPv6", "icmp", 128),  # Neutron: icmp in IPv6 means ICMPv6
             Rule("ingress", "IPv4", "47"),
             Rule("ingress", "IPv6", None, None, None, None, GROUP),
             Rule("egress", "IPv4", "tcp", 443, 443, "198.51.100.7/32"))
    script = compile_ruleset(HostPorts((port("tapa", "fa:16:3e:00:00:01", ("10.0.0.5",),
                                             *rules),), {GROUP: ("2001:db8::9",)}))
    assert chain(script, "ingress_1")[3:-1] == [
        "meta nfproto ipv4 meta l4proto tcp th dport 22 accept",
        "meta nfproto ipv4 ip saddr 192.0.2.0/24 meta l4proto udp th dport 1000-2000 accept",
        "meta nfproto ipv4 meta l4proto icmp icmp type 8 icmp code 0 accept",
        "meta nfproto ipv6 meta l4proto icmpv6 icmpv6 type 128 accept",
        "meta nfproto ipv4 meta l4proto 47 accept",
        f"meta nfproto ipv6 ip6 saddr @{set_names(GROUP)[1]} accept"]
    assert chain(script, "egress_1")[3:] == [
        "meta nfproto ipv4 ip daddr 198.51.100.7/32 meta l4proto tcp th dport 443 return",
        "drop"]
    v4, v6 = set_names(GROUP)
    assert f"  set {v6} {{\n    type ipv6_addr\n    elements = {{ 2001:db8::9 }}\n  }}" in script
    assert f"  set {v4} {{\n    type ipv4_addr\n  }}" in script


def test_a_port_sends_only_from_its_own_mac_and_addresses() -> None:
    script = compile_ruleset(HostPorts((port("tapa", "FA:16:3E:00:00:01",
                                             ("10.0.0.5", "2001:db8::5")),)))
    spoof = chain(script, "from_1")
    assert "ether saddr != fa:16:3e:00:00:01 drop" in spoof
    assert "ether type ip ip saddr != { 10.0.0.5 } drop" in spoof
    lla = link_local("fa:16:3e:00:00:01")
    assert f"ether type ip6 ip6 saddr != {{ 2001:db8::5, {lla} }} drop" in spoof
    assert "ether type arp arp saddr ip != { 0.0.0.0, 10.0.0.5 } drop" in spoof
    assert "ether type != { ip, ip6, arp } drop" in spoof
    assert spoof.index("ether type ip udp sport 67 drop") < spoof.index(
        "meta mark set 0x5a000001 accept")
    assert link_local("fa:16:3e:00:00:01") == "fe80::f816:3eff:fe00:1"
    v6only = chain(compile_ruleset(HostPorts((port(ips=("2001:db8::5",)),))), "from_1")
    assert "ether type ip drop" in v6only


def test_ports_are_numbered_in_marks_and_dispatched() -> None:
    script = compile_ruleset(HostPorts((port("tapb", "fa:16:3e:00:00:02"), port("tapa"))))
    assert 'iifname vmap { "tapa" : jump from_1, "tapb" : jump from_2 }' in script
    assert 'oifname vmap { "tapa" : jump to_1, "tapb" : jump to_2 }' in script
    assert chain(script, "to_2") == [
        "meta mark & 0xff000000 == 0x5a000000 meta mark set meta mark | 0x5a002000 accept",
        "meta mark set 0x5a002000 accept"]
    assert "meta mark & 0xfff000 vmap { 0x001000 : jump ingress_1, 0x002000 : jump ingress_2 }" \
        in script


def test_each_bridge_gets_its_conntrack_zone() -> None:
    one = GuestPort("p1", "tapa", "fa:16:3e:00:00:01", ("10.0.0.5",), (), "brq-a", 7)
    two = GuestPort("p2", "tapb", "fa:16:3e:00:00:02", ("10.0.0.5",), (), "brq-b", 9)
    script = compile_ruleset(HostPorts((one, two)))
    assert chain(script, "zone_in")[1] == 'ct zone set iifname map { "brq-a" : 7, "brq-b" : 9 }'
    assert chain(script, "zone_out")[1] == \
        'ct zone set oifname map { "brq-a" : 7, "brq-b" : 9 }'
    assert "zone_in" not in compile_ruleset(HostPorts((port(),)))
    clash = GuestPort("p3", "tapc", "fa:16:3e:00:00:03", ("10.0.0.6",), (), "brq-a", 8)
    with pytest.raises(CompileError, match="zones"):
        compile_ruleset(HostPorts((one, clash)))


def test_refuses_what_it_cannot_express() -> None:
    with pytest.raises(CompileError):
        compile_ruleset(HostPorts((port("tapa"), port("tapa"))))
    with pytest.raises(CompileError):
        compile_ruleset(HostPorts((port("tap-name-far-too-long"),)))
    with pytest.raises(CompileError):
        compile_ruleset(HostPorts((port("tapa", "fa:16:3e:00:00:01", ("10.0.0.5",),
                                        Rule("ingress", "IPv4", "bogus")),)))


def test_set_update_replaces_members() -> None:
    script = set_update({GROUP: ["10.0.0.7", "2001:db8::7", "10.0.0.6"]})
    v4, v6 = set_names(GROUP)
    assert script.splitlines() == [
        f"flush set inet haven-sg {v4}", f"add element inet haven-sg {v4} {{ 10.0.0.6, 10.0.0.7 }}",
        f"flush set inet haven-sg {v6}", f"add element inet haven-sg {v6} {{ 2001:db8::7 }}"]


def test_from_the_api_shapes() -> None:
    rule = {"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
            "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": None,
            "remote_group_id": GROUP}
    group = {"id": GROUP, "security_group_rules": [rule]}
    mine = {"id": "0123456789abcdef", "mac_address": "fa:16:3e:00:00:01",
            "fixed_ips": [{"ip_address": "10.0.0.5"}], "security_groups": [GROUP],
            "port_security_enabled": True}
    off = {**mine, "id": "ffff", "port_security_enabled": False}
    router = {**mine, "id": "eeee", "device_owner": "network:router_interface"}
    host = host_ports([mine, off, router], [group], [mine])
    assert [p.tap for p in host.ports] == ["tap0123456789a"] == [tap_name(mine["id"])]
    assert host.ports[0].rules == (Rule("ingress", "IPv4", "tcp", 22, 22, None, GROUP),)
    assert members([mine]) == {GROUP: ("10.0.0.5",)}
    with pytest.raises(ValueError):
        host_ports([mine], [], [])  # its group's rules are missing: refuse, never open


@pytest.mark.skipif(shutil.which("nft") is None or shutil.which("unshare") is None,
                    reason="nftables is needed to parse the ruleset")
def test_the_kernel_accepts_the_ruleset() -> None:
    rules = (Rule("ingress", "IPv4", "tcp", 22, 22), Rule("ingress", "IPv6", "icmp", 128, 0),
             Rule("ingress", "IPv4", None, None, None, None, GROUP), Rule("egress", "IPv4"),
             Rule("egress", "IPv6", "udp", 53, 53, "2001:db8::/32"))
    host = HostPorts((port("tapa", "fa:16:3e:00:00:01", ("10.0.0.5", "2001:db8::5"), *rules),
                      GuestPort("p", "tapb", "fa:16:3e:00:00:02", ("10.0.0.6",), (), "br1", 3)),
                     {GROUP: ("10.0.0.6",)})
    script = compile_ruleset(host) + set_update({GROUP: ["10.0.0.5"]})
    done = subprocess.run(["unshare", "--net", "nft", "-f", "-"], input=script, text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_rule_parsing_as_neutron() -> None:
    spec = parse_rule({"direction": "ingress", "protocol": "TCP", "port_range_min": "22",
                       "port_range_max": 22, "remote_ip_prefix": "10.0.0.1"})
    assert (spec.protocol, spec.port_range_min, spec.remote_ip_prefix) == ("tcp", 22,
                                                                          "10.0.0.1/32")
    assert parse_rule({"direction": "egress", "protocol": "any"}).protocol is None
    assert spec_key(parse_rule({"direction": "ingress", "protocol": "6"})) == spec_key(
        parse_rule({"direction": "ingress", "protocol": "tcp"}))
    with pytest.raises(BadRequest, match="remote_group_id"):
        parse_rule({"direction": "ingress", "remote_group_id": GROUP,
                    "remote_ip_prefix": "10.0.0.0/8"})
    assert [(r.direction, r.ethertype, r.remote_group_id) for r in default_rules("g", True)] \
        == [("egress", "IPv4", None), ("egress", "IPv6", None), ("ingress", "IPv4", "g"),
            ("ingress", "IPv6", "g")]


class Host:
    """A hypervisor as the applier sees it: sysctls it may or may not be able to set,
    and the scripts nft was given."""

    def __init__(self, settable: bool) -> None:
        self.settable = settable
        self.sysctl: dict[str, str] = {k: "0" for k in SYSCTLS}
        self.loaded: list[str] = []

    def run(self, argv: Sequence[str], stdin: str | None) -> str:
        if argv[0] == "sysctl" and argv[-1].endswith("=1"):
            if self.settable:
                self.sysctl[argv[-1][:-2]] = "1"
            return ""
        if argv[0] == "sysctl":
            return self.sysctl[argv[-1]] + "\n"
        assert list(argv[:3]) == ["nft", "-f", "-"] and stdin is not None
        self.loaded.append(stdin)
        return ""


def test_applier_loads_nothing_where_bridged_traffic_would_bypass_it() -> None:
    """Fail closed: without br_netfilter's calls into the IP hooks the inet table never
    sees bridged packets, so nothing is loaded and the caller hears why."""
    stuck = Host(settable=False)
    with pytest.raises(ApplyError, match="bridge-nf-call-iptables"):
        NftApplier(stuck.run).apply(HostPorts((port(),)))
    assert stuck.loaded == []
    ok = Host(settable=True)
    NftApplier(ok.run).apply(HostPorts((port(),)))
    assert ok.loaded == [compile_ruleset(HostPorts((port(),)))]
    assert set(ok.sysctl.values()) == {"1"}


def test_applier_reports_a_failed_command() -> None:
    with pytest.raises(ApplyError, match="failed"):
        run_local([sys.executable, "-c", "import sys; sys.exit(3)"], None)

"""Which tracked connections a port's loaded rules still admit
(core/network/agent/secgroup_conntrack.py), alone: parsing ``conntrack -L`` lines and
matching them against the rules the nft compiler compiles (the real cut is
tests/integration/test_secgroup_conntrack_netns.py)."""

from __future__ import annotations

from core.network.agent.secgroup_conntrack import (
    Flow,
    admitted,
    delete_args,
    fingerprint,
    parse,
)
from core.network.agent.secgroup_nft import GuestPort, Rule

GROUP = "0f6f3a4c-1111-4000-8000-000000000001"
EGRESS_ALL = Rule("egress", "IPv4")
WEB = Rule("ingress", "IPv4", "tcp", 8080, 8080)
PORT = GuestPort("p1", "tapp1", "fa:16:3e:00:00:01", ("10.0.0.5",), (EGRESS_ALL, WEB), "br", 7)


def flow(src: str, dst: str, protocol: int = 6, dport: int | None = 8080,
         **kw: int) -> Flow:
    sport = kw.pop("sport", 40000 if dport is not None else None)
    return Flow(4, protocol, src, dst, sport=sport, dport=dport, zone=7, **kw)


def test_conntrack_lines_are_parsed_by_their_original_tuple() -> None:
    tcp = parse("tcp      6 431999 ESTABLISHED src=10.0.0.9 dst=10.0.0.5 sport=40000 "
                "dport=8080 src=10.0.0.5 dst=10.0.0.9 sport=8080 dport=40000 [ASSURED] "
                "mark=0 zone=7 use=1", 4)
    assert tcp == flow("10.0.0.9", "10.0.0.5")
    udp = parse("udp      17 29 src=10.0.0.5 dst=10.0.0.1 sport=5353 dport=53 [UNREPLIED] "
                "src=10.0.0.1 dst=10.0.0.5 sport=53 dport=5353 mark=0 use=1", 4)
    assert udp is not None and (udp.protocol, udp.dport, udp.zone) == (17, 53, 0)
    icmp = parse("icmp     1 29 src=10.0.0.9 dst=10.0.0.5 type=8 code=0 id=77 src=10.0.0.5 "
                 "dst=10.0.0.9 type=0 code=0 id=77 mark=0 zone=7 use=1", 4)
    assert icmp is not None and (icmp.icmp_type, icmp.icmp_code, icmp.icmp_id) == (8, 0, 77)
    assert parse("conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.",
                 4) is None
    assert parse("", 4) is None


def test_only_what_the_rules_still_admit_is_kept() -> None:
    assert admitted(PORT, flow("10.0.0.9", "10.0.0.5"), {})
    assert not admitted(PORT, flow("10.0.0.9", "10.0.0.5", dport=8081), {})
    assert not admitted(PORT, flow("10.0.0.9", "10.0.0.5", protocol=17), {})
    assert admitted(PORT, flow("10.0.0.5", "192.0.2.1", dport=443), {})  # egress: all
    no_egress = GuestPort("p1", "tapp1", PORT.mac, PORT.fixed_ips, (WEB,), "br", 7)
    assert not admitted(no_egress, flow("10.0.0.5", "192.0.2.1", dport=443), {})
    # DHCP is always let through, whatever the rules
    assert admitted(no_egress, flow("10.0.0.5", "10.0.0.2", 17, 67, sport=68), {})
    assert admitted(no_egress, flow("10.0.0.2", "10.0.0.5", 17, 68, sport=67), {})
    # a flow that is not the port's is not its to judge
    assert admitted(no_egress, flow("10.0.0.8", "10.0.0.9"), {})


def test_prefixes_remote_groups_ranges_and_icmp_match_as_compiled() -> None:
    rules = (Rule("ingress", "IPv4", "tcp", 22, 23, remote_ip_prefix="10.1.0.0/16"),
             Rule("ingress", "IPv4", "6", 80, 80, remote_group_id=GROUP),
             Rule("ingress", "IPv4", "icmp", 8, 0),
             Rule("ingress", "IPv6", "icmp"))
    port = GuestPort("p1", "tapp1", PORT.mac, ("10.0.0.5", "2001:db8::5"), rules, "br", 7)
    members = {GROUP: ("10.0.0.9",)}
    assert admitted(port, flow("10.1.2.3", "10.0.0.5", dport=23), members)
    assert not admitted(port, flow("10.2.2.3", "10.0.0.5", dport=23), members)
    assert not admitted(port, flow("10.1.2.3", "10.0.0.5", dport=24), members)
    assert admitted(port, flow("10.0.0.9", "10.0.0.5", dport=80), members)
    assert not admitted(port, flow("10.0.0.9", "10.0.0.5", dport=80), {GROUP: ()})
    ping = flow("10.0.0.9", "10.0.0.5", 1, None, icmp_type=8, icmp_code=0, icmp_id=1)
    assert admitted(port, ping, members)
    assert not admitted(port, Flow(4, 1, "10.0.0.9", "10.0.0.5", icmp_type=13, icmp_code=0),
                        members)
    # "icmp" in an IPv6 rule is ICMPv6 (Neutron's reading, and the compiler's)
    assert admitted(port, Flow(6, 58, "2001:db8::9", "2001:db8::5", icmp_type=128,
                               icmp_code=0), members)
    assert not admitted(port, Flow(6, 1, "2001:db8::9", "2001:db8::5"), members)


def test_fingerprint_changes_with_rules_members_and_zone_only() -> None:
    members = {GROUP: ("10.0.0.9",)}
    remote = Rule("ingress", "IPv4", "tcp", 80, 80, remote_group_id=GROUP)
    port = GuestPort("p1", "tapp1", PORT.mac, PORT.fixed_ips, (WEB, remote), "br", 7)
    same = GuestPort("p1", "tapp2", PORT.mac, PORT.fixed_ips, (remote, WEB), "br", 7)
    assert fingerprint(port, members) == fingerprint(same, {**members, "other": ("1.1.1.1",)})
    assert fingerprint(port, members) != fingerprint(port, {GROUP: ()})
    fewer = GuestPort("p1", "tapp1", PORT.mac, PORT.fixed_ips, (remote,), "br", 7)
    assert fingerprint(port, members) != fingerprint(fewer, members)
    moved = GuestPort("p1", "tapp1", PORT.mac, PORT.fixed_ips, (WEB, remote), "br", 8)
    assert fingerprint(port, members) != fingerprint(moved, members)


def test_an_entry_is_deleted_by_its_own_tuple_in_its_zone() -> None:
    assert delete_args(flow("10.0.0.9", "10.0.0.5")) == [
        "-f", "ipv4", "-w", "7", "-p", "6", "-s", "10.0.0.9", "-d", "10.0.0.5",
        "--sport", "40000", "--dport", "8080"]
    ping = Flow(4, 1, "10.0.0.9", "10.0.0.5", icmp_type=8, icmp_code=0, icmp_id=3)
    assert delete_args(ping)[-6:] == ["--icmp-type", "8", "--icmp-code", "0", "--icmp-id",
                                      "3"]

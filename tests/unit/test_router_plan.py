"""The router data plane's planner (pure) and the executor's reading of nft's JSON."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from core.network.routerns.netns import _nat_rule
from core.network.routerns.plan import (
    Device,
    FloatingMap,
    Gateway,
    Leg,
    NatRule,
    PlanError,
    RouterSpec,
    RouterState,
    differences,
    plan,
    render_nat,
)

GW = Gateway("gwport-000011112222", "FA:16:3E:00:00:0A", "203.0.113.10", 24, "brq-ext",
             "203.0.113.1")
IF1 = Leg("ifport-000011112222", "fa:16:3e:00:00:01", "10.0.0.1", 24, "brq-a")
IF2 = Leg("ifport-333344445555", "fa:16:3e:00:00:02", "10.9.0.1", 16, "brq-b")
FIP = FloatingMap("203.0.113.20", "10.0.0.5")
SPEC = RouterSpec("r1", "qrouter-r1", GW, (IF1, IF2), (FIP,))


def test_gateway_interfaces_and_a_floating_ip() -> None:
    state = plan(SPEC)
    qg, qr1, qr2 = state.devices
    assert (qg.name, qg.peer, qg.mac, qg.bridge) == ("qg-gwport-0000", "tapgwport-0000",
                                                      "fa:16:3e:00:00:0a", "brq-ext")
    assert qg.addresses == {"203.0.113.10/24", "203.0.113.20/32"}  # the FIP answers ARP
    assert (qr1.name, qr1.addresses, qr2.addresses) == (
        "qr-ifport-0000", {"10.0.0.1/24"}, {"10.9.0.1/16"})
    assert all(len(d.name) <= 15 and len(d.peer) <= 15 and d.up for d in state.devices)
    assert state.default_route == ("203.0.113.1", "qg-gwport-0000") and state.forwarding
    assert [r.render() for r in state.nat] == [
        "ip daddr 203.0.113.20 dnat to 10.0.0.5",
        "ip daddr 203.0.113.20 dnat to 10.0.0.5",
        'ip saddr 10.0.0.5 oifname "qg-gwport-0000" snat to 203.0.113.20',
        'ip saddr 10.0.0.0/24 oifname "qg-gwport-0000" snat to 203.0.113.10',
        'ip saddr 10.9.0.0/16 oifname "qg-gwport-0000" snat to 203.0.113.10',
    ]
    assert [r.chain for r in state.nat] == ["prerouting", "output"] + ["postrouting"] * 3


def test_without_snat_only_floating_ips_are_translated() -> None:
    rules = plan(replace(SPEC, enable_snat=False)).nat
    assert [r.to for r in rules] == ["10.0.0.5", "10.0.0.5", "203.0.113.20"]


def test_admin_down_router_forwards_nothing() -> None:
    state = plan(replace(SPEC, admin_state_up=False))
    assert not any(d.up for d in state.devices)
    assert state.nat == () and state.default_route is None


def test_no_gateway_means_no_nat_and_no_default_route() -> None:
    state = plan(RouterSpec("r1", "ns", None, (IF1,)))
    assert [d.name for d in state.devices] == ["qr-ifport-0000"]
    assert state.nat == () and state.default_route is None


@pytest.mark.parametrize("spec, words", [
    (replace(SPEC, gateway=None), "without a gateway"),
    (replace(SPEC, floating_ips=(FloatingMap("203.0.113.20", "192.168.1.5"),)),
     "behind no interface"),
    (replace(SPEC, floating_ips=(FIP, FloatingMap("203.0.113.20", "10.0.0.6"))),
     "mapped twice"),
    (replace(SPEC, interfaces=(IF1, replace(IF2, address="10.0.0.129", prefixlen=25))),
     "overlapping"),
    (replace(SPEC, floating_ips=(FloatingMap("nonsense", "10.0.0.5"),)), "not an IP"),
    (replace(SPEC, gateway=replace(GW, bridge="")), "no bridge"),
])
def test_contradictions_are_configuration_errors(spec: RouterSpec, words: str) -> None:
    with pytest.raises(PlanError, match=words):
        plan(spec)


def test_the_table_is_replaced_in_one_transaction() -> None:
    script = render_nat(plan(SPEC))
    lines = script.splitlines()
    assert lines[:3] == ["table ip haven_router", "delete table ip haven_router",
                         "table ip haven_router {"]
    assert "type nat hook prerouting priority dstnat; policy accept;" in script
    assert "type nat hook postrouting priority srcnat; policy accept;" in script
    assert '    ip saddr 10.0.0.0/24 oifname "qg-gwport-0000" snat to 203.0.113.10' in lines


def test_differences_name_what_is_missing_or_extra() -> None:
    desired = plan(SPEC)
    assert differences(desired, desired) == []
    qg = desired.devices[0]
    stale = replace(qg, addresses=qg.addresses | {"203.0.113.99/32"})
    observed = RouterState(desired.namespace, (stale, *desired.devices[1:2]),
                           desired.default_route, False, desired.nat[:-1])
    problems = differences(desired, observed)
    assert any("qg-gwport-0000: addresses" in p for p in problems)
    assert "device qr-ifport-3333 missing" in problems
    assert any(p.startswith("forwarding False") for p in problems)
    assert any(p.startswith("NAT rules") for p in problems)
    extra = Device("qr-old", "tapold", "fa:16:3e:00:00:33", "brq-a", frozenset(), True)
    assert differences(desired, replace(desired, devices=(*desired.devices, extra))) == [
        "device qr-old not planned"]


def match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def test_nft_json_reads_back_as_the_planned_rules() -> None:
    """nft 1.0.6's JSON for the planner's rules (taken from a real namespace)."""
    saddr = {"payload": {"protocol": "ip", "field": "saddr"}}
    oif = {"meta": {"key": "oifname"}}
    rule = {"chain": "postrouting", "expr": [
        match(saddr, {"prefix": {"addr": "10.0.0.0", "len": 24}}),
        match(oif, "qg-gwport-0000"), {"snat": {"addr": "203.0.113.10"}}]}
    assert _nat_rule(rule) == NatRule("postrouting", saddr="10.0.0.0/24",
                                      oifname="qg-gwport-0000", action="snat",
                                      to="203.0.113.10")
    dnat = {"chain": "prerouting", "expr": [
        match({"payload": {"protocol": "ip", "field": "daddr"}}, "203.0.113.20"),
        {"dnat": {"addr": "10.0.0.5"}}]}
    assert _nat_rule(dnat) == plan(SPEC).nat[0]
    # anything the planner does not write is not read as a planned rule
    assert _nat_rule({"chain": "prerouting", "expr": [{"accept": None}]}) is None
    assert _nat_rule({"chain": "prerouting", "expr": [
        match({"payload": {"protocol": "tcp", "field": "dport"}}, 22),
        {"dnat": {"addr": "10.0.0.5"}}]}) is None

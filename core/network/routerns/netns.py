"""The executor: carry out a planned :class:`RouterState` in a network namespace, read
one back, take one away. Only ``ip``, ``nft``, ``sysctl`` and ``arping``.

``node`` names the namespace the bridges live in: None is the calling process's own
(on a network node, the host's), a name is one the caller made (the tests build
their node that way and never touch the host's). Every step is idempotent: apply
on a namespace in any state converges it, remove of a missing one succeeds.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Any

from core.network.routerns.plan import (
    CHAINS,
    DEVICE_PREFIXES,
    TABLE,
    Device,
    NatRule,
    RouterState,
    render_nat,
)


class DataplaneError(RuntimeError):
    """A command that should have worked did not (the message carries its stderr)."""


class BridgeMissing(DataplaneError):
    """The bridge a router's leg goes into is not on this node (yet): the network agent
    makes a network's bridge once a port of it is bound here."""


def run(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                          timeout=60)
    if check and done.returncode != 0:
        raise DataplaneError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def ip(ns: str | None, *args: str, check: bool = True) -> str:
    return run(["ip", *(["-n", ns] if ns else []), *args], check=check)


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def namespaces() -> set[str]:
    return {line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line}


def links(ns: str | None) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in json.loads(ip(ns, "-j", "link", "show") or "[]")}


# ---- reading ---------------------------------------------------------------------------
def _nat_rule(rule: dict[str, Any]) -> NatRule | None:
    """A rule of the table as the planner writes them, or None for anything else."""
    fields: dict[str, Any] = {"chain": rule["chain"]}
    for expr in rule.get("expr", []):
        if "match" in expr:
            left, right = expr["match"]["left"], expr["match"]["right"]
            if expr["match"].get("op") not in ("==", "in"):
                return None
            if isinstance(right, dict) and "prefix" in right:
                right = f"{right['prefix']['addr']}/{right['prefix']['len']}"
            if left.get("payload", {}).get("field") in ("saddr", "daddr"):
                fields[left["payload"]["field"]] = str(right)
            elif left.get("meta", {}).get("key") == "oifname":
                fields["oifname"] = str(right)
            else:
                return None
        elif "snat" in expr or "dnat" in expr:
            action = "snat" if "snat" in expr else "dnat"
            fields["action"], fields["to"] = action, str(expr[action].get("addr"))
        else:
            return None
    return NatRule(**fields) if "to" in fields else None


def read_nat(ns: str) -> tuple[NatRule, ...] | None:
    """The table's rules in order; None if there is no table, or a rule the planner does
    not write (observed then never equals planned)."""
    done = subprocess.run(in_ns(ns, "nft", "-j", "list", "table", "ip", TABLE),
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return None
    rules, chains = [], set()
    for item in json.loads(done.stdout)["nftables"]:
        if "chain" in item:
            c = item["chain"]
            chains.add((c.get("name"), c.get("hook"), c.get("type"), c.get("policy")))
        if "rule" in item:
            rule = _nat_rule(item["rule"])
            if rule is None:
                return None
            rules.append(rule)
    if chains != {(name, hook, "nat", "accept") for name, hook, _ in CHAINS}:
        return None
    return tuple(rules)


def observe(ns: str, node: str | None) -> RouterState | None:
    """The namespace as the kernel has it (None: no such namespace)."""
    if ns not in namespaces():
        return None
    node_links = links(node)
    devices = []
    for a in json.loads(ip(ns, "-j", "addr", "show") or "[]"):
        name = a["ifname"]
        if name == "lo":
            continue
        addresses = frozenset(f"{i['local']}/{i['prefixlen']}" for i in a.get("addr_info", [])
                              if i.get("family") == "inet")
        peer_index = a.get("link_index")
        peer = next((n for n, link in node_links.items() if link["ifindex"] == peer_index
                     and link.get("link_type") == "ether"), "")
        bridge = node_links.get(peer, {}).get("master", "")
        devices.append(Device(name, peer, a.get("address", ""), bridge, addresses,
                              "UP" in a.get("flags", [])))
    route = None
    for r in json.loads(ip(ns, "-j", "route", "show", "default") or "[]"):
        if "gateway" in r:
            route = (r["gateway"], r["dev"])
    forwarding = run(in_ns(ns, "sysctl", "-n", "net.ipv4.ip_forward")).strip() == "1"
    nat = read_nat(ns)
    return RouterState(ns, tuple(sorted(devices, key=lambda d: d.name)), route, forwarding,
                       nat if nat is not None else (NatRule("missing", to="?"),))


# ---- changing --------------------------------------------------------------------------
def _ensure_device(ns: str, node: str | None, dev: Device, present: dict[str, Any]
                   ) -> list[str]:
    """Make ``dev`` as planned; returns the addresses it newly took (to announce)."""
    if dev.name not in present:
        if dev.peer in links(node):
            ip(node, "link", "del", dev.peer)  # a stale half of an old pair
        ip(node, "link", "add", dev.peer, "type", "veth", "peer", "name", dev.name,
           "netns", ns)
    ip(ns, "link", "set", dev.name, "address", dev.mac)
    if dev.bridge not in links(node):
        raise BridgeMissing(f"bridge {dev.bridge} does not exist")
    ip(node, "link", "set", dev.peer, "master", dev.bridge, "up")
    have = {f"{i['local']}/{i['prefixlen']}" for a in json.loads(
        ip(ns, "-j", "addr", "show", "dev", dev.name)) for i in a.get("addr_info", [])
        if i.get("family") == "inet"}
    for extra in sorted(have - dev.addresses):
        ip(ns, "addr", "del", extra, "dev", dev.name)
    added = sorted(dev.addresses - have)
    for address in added:
        ip(ns, "addr", "add", address, "dev", dev.name)
    ip(ns, "link", "set", dev.name, "up" if dev.up else "down")
    return [a.split("/")[0] for a in added] if dev.up else []


def apply(state: RouterState, node: str | None) -> None:
    """Converge the namespace ``state.namespace`` on ``state`` (creating it if needed)."""
    ns = state.namespace
    if ns not in namespaces():
        run(["ip", "netns", "add", ns])
    ip(ns, "link", "set", "lo", "up")
    run(in_ns(ns, "sysctl", "-q", "-w", f"net.ipv4.ip_forward={int(state.forwarding)}"))
    present = links(ns)
    planned = {d.name for d in state.devices}
    for name in sorted(present):
        if name.startswith(DEVICE_PREFIXES) and name not in planned:
            ip(ns, "link", "del", name)  # an interface or gateway the router no longer has
    announce: list[tuple[str, str]] = []
    for dev in state.devices:
        announce += [(dev.name, a) for a in _ensure_device(ns, node, dev, present)]
    route = json.loads(ip(ns, "-j", "route", "show", "default") or "[]")
    if state.default_route is None:
        if route:
            ip(ns, "route", "del", "default")
    else:
        hop, dev_name = state.default_route
        ip(ns, "route", "replace", "default", "via", hop, "dev", dev_name)
    run(in_ns(ns, "nft", "-f", "-"), stdin=render_nat(state))
    announce_addresses(ns, announce)


def announce_addresses(ns: str, pairs: list[tuple[str, str]]) -> None:
    """Gratuitous ARP for each newly taken address, all at once (each arping waits about
    a second): the neighbours, the upstream router first, learn the new owner now
    instead of when their cache expires (after a failover, the address moved here)."""
    procs = [subprocess.Popen(in_ns(ns, "arping", "-U", "-c", "1", "-I", dev, addr),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for dev, addr in pairs]
    for proc in procs:
        proc.wait(timeout=60)


def remove(ns: str) -> None:
    """Take the namespace away with its devices (their peers in the node go with them)."""
    if ns not in namespaces():
        return
    for name in sorted(links(ns)):
        if name != "lo":
            ip(ns, "link", "del", name, check=False)
    run(["ip", "netns", "del", ns])

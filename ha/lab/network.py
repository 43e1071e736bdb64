"""The lab's network: a switch namespace holding a bridge, and one veth "cable" per
node from that bridge into the node's network namespace.

The bridge has no address and the root namespace has no route into the lab: lab
addresses exist only inside the lab's own namespaces, so nothing the lab runs can
reach (or be reached from) anything outside this machine. A node's cable is cut
on the switch side (``ip -n SWITCH link set VETH down``), which is also the first
half of a power loss: the peers stop hearing the node at once, as with a real
pulled plug, instead of getting the clean socket closes of a mere ``kill -9``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ha.lab.commands import LabError, run

RUN_NETNS = Path("/run/netns")
NODE_IFNAME = "eth0"
# The provider network's cable: a second bridge in the switch namespace and a second
# NIC per node, without an address (the node's network agent puts it into the
# provider network's bridge). The switch namespace holds the "outside" on it.
EXT_BRIDGE = "br-ext"
EXT_IFNAME = "eth1"


def ext_cable(veth: str) -> str:
    """The switch-side end of a node's provider cable (``veth-node1`` -> ``ext-node1``)."""
    return "ext-" + veth.removeprefix("veth-")


def netns_exists(name: str) -> bool:
    return (RUN_NETNS / name).exists()


def list_netns(prefix: str) -> list[str]:
    """The lab's network namespaces (named ``PREFIX-*``)."""
    if not RUN_NETNS.is_dir():
        return []
    return sorted(p.name for p in RUN_NETNS.iterdir() if p.name.startswith(prefix + "-"))


def add_netns(name: str) -> None:
    if not netns_exists(name):
        run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def create_switch(switch_ns: str, bridge: str) -> None:
    """The switch: a namespace with one bridge, no address, spanning tree off (so a
    plugged cable forwards at once)."""
    add_netns(switch_ns)
    for name in (bridge, EXT_BRIDGE):
        result = run(["ip", "-n", switch_ns, "link", "show", name], check=False)
        if result.returncode != 0:
            run(["ip", "-n", switch_ns, "link", "add", name, "type", "bridge",
                 "stp_state", "0", "forward_delay", "0"])
        run(["ip", "-n", switch_ns, "link", "set", name, "up"])


def plug_node(switch_ns: str, bridge: str, node_ns: str, veth: str, address: str,
              prefixlen: int) -> None:
    """Give the node its namespace, a cable into the bridge (address on eth0) and one
    into the provider bridge (eth1, no address)."""
    add_netns(node_ns)
    for cable, bridge_of, ifname in ((veth, bridge, NODE_IFNAME),
                                     (ext_cable(veth), EXT_BRIDGE, EXT_IFNAME)):
        if run(["ip", "-n", switch_ns, "link", "show", cable], check=False).returncode != 0:
            run(["ip", "-n", switch_ns, "link", "add", cable, "type", "veth",
                 "peer", "name", ifname, "netns", node_ns])
        run(["ip", "-n", switch_ns, "link", "set", cable, "master", bridge_of, "up"])
        run(["ip", "-n", node_ns, "link", "set", ifname, "up"])
    run(["ip", "-n", node_ns, "addr", "replace", f"{address}/{prefixlen}", "dev", NODE_IFNAME])


def set_link(switch_ns: str, veth: str, up: bool) -> None:
    """Plug or unplug both of the node's cables at the switch (a cut node hears
    nothing, on any network)."""
    for cable in (veth, ext_cable(veth)):
        run(["ip", "-n", switch_ns, "link", "set", cable, "up" if up else "down"],
            check=cable == veth)  # a lab made before the provider cable has none


def link_is_up(switch_ns: str, veth: str) -> bool | None:
    """Whether the node's cable is up on the switch side (None: no such cable)."""
    result = run(["ip", "-j", "-n", switch_ns, "link", "show", veth], check=False)
    if result.returncode != 0:
        return None
    try:
        flags = json.loads(result.stdout)[0].get("flags", [])
    except (ValueError, IndexError) as exc:
        raise LabError(f"cannot read link state of {veth}: {exc}") from None
    return "UP" in flags


def netns_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (ip netns pids)."""
    result = run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def delete_netns(name: str) -> None:
    """Delete a namespace; its veth ends go with it (a veth dies with either end)."""
    if netns_exists(name):
        run(["ip", "netns", "delete", name])

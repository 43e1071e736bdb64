"""What a lab looks like, as pure functions: node plans, corosync.conf, /etc/hosts,
the mount plan of a node, and the pcs commands that set up fencing.

Nothing here touches the machine, so every rule (addresses, interface-name length,
"each ``{`` at a line end") is checked by unit tests in milliseconds.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree as ET

from ha.bootstrap.corosync import corosync_conf  # noqa: F401 - the lab writes the same file

PREFIX = "hvl"  # every network namespace the lab makes is named hvl-*
DEFAULT_SUBNET = "10.213.0.0/24"  # lives only inside the lab's namespaces
DEFAULT_CLUSTER = "haven-lab"
DEFAULT_TOKEN_MS = 3000
# Pacemaker's controller waits dc-deadtime (20 s by default) for a DC before it
# holds an election; lab nodes boot within a second or two of each other, so 5 s
# is plenty and saves ~15 s on every `up`.
# load-threshold: every lab node reads the whole machine's load average (one kernel),
# and Pacemaker throttles a node that looks busy down to one action at a time ("High
# CPU load detected"): a returning node then started its resources one by one for
# ~100 s. The lab's nodes are not really loaded by each other, so the throttle is lifted.
LAB_CIB_PROPERTIES: Mapping[str, str] = {"dc-deadtime": "5s", "load-threshold": "10000%"}
FIRST_HOST = 11  # node1 is .11: easy to tell from a bridge or gateway address
MAX_NODES = 16  # each node costs ~100 MB and some CPU: the lab stays lean
IFNAMSIZ = 15  # Linux interface names are at most 15 characters
FENCE_AGENT = "fence_haven_lab"
FENCE_ACTIONS = ("off", "reboot")


class PlanError(ValueError):
    """A lab that cannot be built as asked (too many nodes, bad subnet...)."""


@dataclass(frozen=True)
class NodePlan:
    name: str
    nodeid: int
    address: str
    netns: str
    veth: str


def switch_netns(prefix: str = PREFIX) -> str:
    return f"{prefix}-switch"


def plan_nodes(count: int, subnet: str = DEFAULT_SUBNET, prefix: str = PREFIX) -> list[NodePlan]:
    """Names, node ids, addresses and interface names of ``count`` nodes.

    Node ids start at 1 (corosync reserves 0); addresses are FIRST_HOST.. in
    ``subnet``, which must leave room for them.
    """
    if not 1 <= count <= MAX_NODES:
        raise PlanError(f"--nodes must be between 1 and {MAX_NODES}, got {count}")
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError as exc:
        raise PlanError(f"bad lab subnet {subnet!r}: {exc}") from None
    if net.num_addresses < FIRST_HOST + count + 1:
        raise PlanError(f"subnet {subnet} is too small for {count} nodes")
    plans = []
    for i in range(1, count + 1):
        name = f"node{i}"
        veth = f"veth-{name}"
        if len(veth) > IFNAMSIZ:  # pragma: no cover - MAX_NODES keeps names short
            raise PlanError(f"interface name {veth!r} is longer than {IFNAMSIZ}")
        plans.append(NodePlan(name=name, nodeid=i, address=str(net[FIRST_HOST + i - 1]),
                              netns=f"{prefix}-{name}", veth=veth))
    return plans


def prefix_length(subnet: str) -> int:
    return ipaddress.IPv4Network(subnet).prefixlen


def hosts_file(nodes: Sequence[NodePlan]) -> str:
    """/etc/hosts for every node: all node names resolve (Galera and RabbitMQ name
    their peers by host name), with no DNS involved."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", ""]
    lines += [f"{node.address}\t{node.name}" for node in nodes]
    return "\n".join(lines) + "\n"


Seed = Literal["empty", "skeleton", "copy"]


@dataclass(frozen=True)
class NodeMount:
    """One private mount in a node's mount namespace.

    ``kind`` is tmpfs, bind (a per-node copy of the host path) or overlay. For a
    bind, ``seed`` says how the per-node copy starts: empty, the host's directory
    tree without files (log and state directories: right owners and modes, no
    data), or a full copy (configuration).
    """

    target: str
    kind: Literal["tmpfs", "bind", "overlay"]
    seed: Seed = "empty"
    options: str = ""
    skeleton_only: tuple[str, ...] = ()  # for "copy": subdirectories copied as skeleton


NODE_MOUNTS: tuple[NodeMount, ...] = (
    # Fresh at every boot, like on a real machine. /tmp too: PID namespaces make
    # PIDs equal across nodes, and mariadbd's temp-file names would collide.
    NodeMount("/run", "tmpfs", options="mode=0755"),
    NodeMount("/dev/shm", "tmpfs", options="mode=1777"),  # libqb IPC of corosync/pacemaker
    NodeMount("/tmp", "tmpfs", options="mode=1777"),
    NodeMount("/etc/hosts", "bind"),
    NodeMount("/etc/corosync", "bind", "copy"),
    NodeMount("/var/lib/corosync", "bind"),
    NodeMount("/var/lib/pacemaker", "bind", "skeleton"),
    NodeMount("/var/lib/pcsd", "bind"),
    NodeMount("/var/log", "bind", "skeleton"),  # includes pacemaker/, corosync/, crmsh/
    NodeMount("/etc/libvirt", "bind", "copy", skeleton_only=("qemu", "nwfilter", "secrets")),
    NodeMount("/var/lib/libvirt", "bind", "skeleton"),
    NodeMount("/var/cache/libvirt", "bind", "skeleton"),
    NodeMount("/etc/mysql", "bind", "copy"),
    NodeMount("/var/lib/mysql", "bind"),
    NodeMount("/etc/rabbitmq", "bind", "copy"),
    NodeMount("/var/lib/rabbitmq", "bind"),
    NodeMount("/etc/haven", "bind"),
    NodeMount("/var/lib/haven", "bind"),
)
# Every node's zone. Not UTC, on purpose: Pacemaker prints local times with their
# offset ("2026-11-30 01:06:57 +05:30"), and the lab must exercise what a real node
# in such a zone prints, not only the "Z" form of a UTC machine (the controller
# reads fence times from it). The zone file is bound over /etc/localtime; mount
# follows a symlink there (Debian's /etc/localtime links to the zone file, often
# Etc/UTC), so inside a node that file reads as this zone too. Nothing in the lab
# names a zone explicitly (no TZ=).
NODE_TIMEZONE = "Asia/Kolkata"
ZONEINFO = Path("/usr/share/zoneinfo")
# Log directories every node needs even if the host never created them.
NODE_LOG_DIRS: tuple[str, ...] = ("corosync", "pacemaker", "crmsh", "libvirt/qemu", "pcsd",
                                  "mysql", "haven")
NODE_RUN_DIRS: tuple[str, ...] = ("lock",)  # made by init in the fresh /run


def node_source(node_root: Path, target: str) -> Path:
    """Where a node's private copy of host path ``target`` lives in the lab dir."""
    return node_root / target.lstrip("/")


CHECKOUT = Path(__file__).resolve().parents[2]  # the Haven tree the nodes run from


def init_mounts(node_root: Path, sbin_overlay: Path, checkout: Path = CHECKOUT
                ) -> list[dict[str, str]]:
    """The mount list a node's init performs, in order.

    The zone file of ``NODE_TIMEZONE`` goes over /etc/localtime (a node's clock reads
    in a zone other than UTC, see there). The last one overlays the lab's fence agent
    onto /usr/sbin inside the node only, where pacemaker-fenced looks for fence_*
    agents; the host's /usr stays untouched.

    Nodes run Haven from the host's checkout. A checkout under a path that a node
    gets fresh (a clone in /tmp, as a CI job makes) would vanish under the node's
    tmpfs: it is bound to a holding place in the node's directory first and bound
    back at its own path once the tmpfs is there.
    """
    hidden = any(m.kind == "tmpfs" and checkout.is_relative_to(m.target)
                 for m in NODE_MOUNTS)
    holding = node_root / "checkout"
    mounts = []
    if hidden:
        mounts.append({"kind": "bind", "source": str(checkout), "target": str(holding),
                       "options": "", "mkdir": "yes"})
    for mount in NODE_MOUNTS:
        entry = {"kind": mount.kind, "target": mount.target, "options": mount.options}
        if mount.kind == "bind":
            entry["source"] = str(node_source(node_root, mount.target))
        mounts.append(entry)
    if hidden:
        mounts.append({"kind": "bind", "source": str(holding), "target": str(checkout),
                       "options": "", "mkdir": "yes"})
    mounts.append({"kind": "bind", "source": str(ZONEINFO / NODE_TIMEZONE),
                   "target": "/etc/localtime", "options": ""})
    mounts.append({"kind": "overlay", "target": "/usr/sbin", "source": "overlay",
                   "options": f"lowerdir={sbin_overlay}:/usr/sbin"})
    return mounts


def seed_cib(empty_cib: str, properties: Mapping[str, str]) -> str:
    """The CIB a node boots with: ``cibadmin --empty``'s skeleton (right schema for
    the installed Pacemaker) plus cluster properties that matter *before* the
    cluster can be configured at all, such as dc-deadtime."""
    root = ET.fromstring(empty_cib)
    crm_config = root.find("configuration/crm_config")
    if crm_config is None:
        raise PlanError("cibadmin --empty gave a CIB without configuration/crm_config")
    props = ET.SubElement(crm_config, "cluster_property_set", id="cib-bootstrap-options")
    for name, value in properties.items():
        ET.SubElement(props, "nvpair", id=f"cib-bootstrap-options-{name}", name=name,
                      value=value)
    return ET.tostring(root, encoding="unicode") + "\n"


def pcs_fencing_commands(nodes: Sequence[NodePlan], socket_path: Path,
                         fence_action: str = "off") -> list[list[str]]:
    """The pcs commands that make Pacemaker fence through the lab's power switch:
    one stonith device per node, each able to fence only its own node.

    ``fence_action`` "off" (the lab default) leaves a fenced node powered off, as a
    PDU would after "off": no node comes back on its own and loads the machine;
    "reboot" powers it back on, and it rejoins.
    """
    if fence_action not in FENCE_ACTIONS:
        raise PlanError(f"fence action must be one of {', '.join(FENCE_ACTIONS)}")
    commands = [["pcs", "property", "set", "stonith-enabled=true",
                 f"stonith-action={fence_action}", "stonith-timeout=60s"]]
    for node in nodes:
        commands.append(["pcs", "stonith", "create", f"fence-{node.name}", FENCE_AGENT,
                         f"plug={node.name}", f"socket={socket_path}",
                         f"pcmk_host_list={node.name}", "pcmk_host_check=static-list",
                         "op", "monitor", "interval=60s"])
    return commands


def script(commands: Sequence[Sequence[str]]) -> str:
    """Commands as a shell script an operator can read and rerun."""
    return "".join(shlex.join(cmd) + "\n" for cmd in commands)

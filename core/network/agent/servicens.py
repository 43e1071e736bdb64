"""A network's service namespace on a hypervisor: where its DHCP and metadata live.

Per network the host carries (Neutron's ``qdhcp-<id>`` namespace)::

    host namespace                          service namespace (hostnet.service_namespace)
    brq<net> -- tap<dhcp port id[:11]> ==veth== ns-<dhcp port id[:11]>
                                                  MAC of the DHCP port
                                                  its fixed IPs (one per DHCP subnet)
                                                  169.254.169.254/32 (METADATA_ADDRESS)

The host end is named as any port's tap is (``hostnet.tap_name`` of the DHCP
port), so the data path plugs it like a guest's tap: into the network's bridge with
Linux bridges, into a ``qbr`` bridge of its own joined to br-int with Open vSwitch
(:mod:`core.network.agent.hybrid`; the DHCP port has no filter chains there).
Everything here is idempotent and reads the host before changing it. A namespace
is made only under a marker file (``<marker_dir>/<network id>``) so the agent
later removes only the namespaces it made, even after a restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from core.common.hostnet import METADATA_ADDRESS, service_namespace, tap_name
from core.network.agent.driver import DataPathError

LOG = logging.getLogger(__name__)
NETNS_DIR = Path("/run/netns")


def inner_name(dhcp_port_id: str) -> str:
    """The service namespace's end of the veth (Neutron's ``ns-`` device)."""
    return "ns-" + dhcp_port_id[:11]


class ServiceNamespaces:
    """Makes and removes the service namespaces of one hypervisor.

    ``host_netns`` is the namespace the hypervisor's bridges live in (None: this
    process's own; the tests' hypervisors are namespaces). ``namespace_of`` names a
    network's service namespace (``hostnet.service_namespace`` in production).
    """

    def __init__(self, marker_dir: Path, host_netns: str | None = None,
                 namespace_of: Callable[[str], str] = service_namespace) -> None:
        self.marker_dir = marker_dir
        self.host_netns = host_netns
        self.namespace_of = namespace_of

    def _run(self, argv: Sequence[str], check: bool = True) -> str:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                              timeout=60)
        if check and done.returncode != 0:
            raise DataPathError(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def _host_ip(self, *args: str) -> list[str]:
        return ["ip", *(["-n", self.host_netns] if self.host_netns else []), *args]

    def managed(self) -> set[str]:
        """Network ids whose namespace this agent made and has not removed."""
        if not self.marker_dir.is_dir():
            return set()
        return {p.name for p in self.marker_dir.iterdir()}

    def ensure(self, network_id: str, dhcp_port_id: str, mac: str,
               addresses: Sequence[str], mtu: int) -> None:
        """The namespace, its veth into the host, its addresses: exactly these."""
        ns = self.namespace_of(network_id)
        self.marker_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.marker_dir / network_id).touch()
        if not (NETNS_DIR / ns).exists():
            self._run(["ip", "netns", "add", ns])
        inner, outer = inner_name(dhcp_port_id), tap_name(dhcp_port_id)
        links = json.loads(self._run(["ip", "-n", ns, "-j", "link", "show"]) or "[]")
        names = {link["ifname"] for link in links}
        for stale in sorted(n for n in names if n.startswith("ns-") and n != inner):
            self._run(["ip", "-n", ns, "link", "del", stale])  # an older DHCP port's leg
        if inner not in names:
            self._run(self._host_ip("link", "del", outer), check=False)  # a lone old end
            self._run(self._host_ip("link", "add", outer, "mtu", str(mtu), "type", "veth",
                                    "peer", "name", inner, "mtu", str(mtu), "netns", ns))
        self._run(["ip", "-n", ns, "link", "set", "lo", "up"])
        self._run(["ip", "-n", ns, "link", "set", inner, "address", mac, "mtu", str(mtu),
                   "up"])
        self._run(self._host_ip("link", "set", outer, "up"))
        want = {*addresses, f"{METADATA_ADDRESS}/32"}
        have = set()
        for item in json.loads(self._run(["ip", "-n", ns, "-j", "addr", "show", "dev", inner])
                               or "[]"):
            for a in item.get("addr_info", []):
                if a.get("family") == "inet":
                    have.add(f"{a['local']}/{a['prefixlen']}")
        for cidr in sorted(have - want):
            self._run(["ip", "-n", ns, "addr", "del", cidr, "dev", inner])
        for cidr in sorted(want - have):
            self._run(["ip", "-n", ns, "addr", "add", cidr, "dev", inner])

    def remove(self, network_id: str) -> None:
        """Delete the namespace (its veth goes with it) and forget it."""
        ns = self.namespace_of(network_id)
        if (NETNS_DIR / ns).exists():
            self._run(["ip", "netns", "del", ns])
            LOG.info("network %s: service namespace %s removed", network_id, ns)
        with contextlib.suppress(FileNotFoundError):
            (self.marker_dir / network_id).unlink()

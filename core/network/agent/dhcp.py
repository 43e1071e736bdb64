"""A hypervisor's DHCP for its own ports: the dnsmasq configuration of one network.

No DHCP agent on a controller, so nothing to fail over: every hypervisor runs one
dnsmasq per network it carries, bound to that network's bridge, and answers only
the ports bound to it (what OVN's native DHCP does). A guest gets its address
while every controller is down, because nothing but its own hypervisor is asked.

Three files per network (:func:`render`), each safe to read by itself:

* ``dnsmasq.conf``: what needs a restart to change (interface, ranges, flags);
* ``hosts`` (``dhcp-hostsfile``): one ``<mac>,<ip>,<hostname>`` line per port;
* ``opts`` (``dhcp-optsfile``): router, DNS servers, MTU (26), classless routes (121).

dnsmasq re-reads the last two on SIGHUP, so a port coming or going is a rewrite
and a HUP, never a restart that would drop the others' answers.

What keeps an address from being handed twice, or to the wrong guest:

* only static hosts: ``dhcp-range=<net>,static`` has no pool to draw from, and
  ``dhcp-ignore=tag:!known`` drops every MAC that is not one of this host's
  ports, for DISCOVER and REQUEST alike. The second matters on a shared segment:
  an authoritative dnsmasq NAKs a REQUEST it did not offer ("wrong server-ID"),
  so without it every other hypervisor would NAK this host's guests;
* one address, one MAC: two ports claiming one address (or one MAC twice) is
  refused as input (:class:`DhcpConfigError`), never written;
* no lease database (``leasefile-ro``): a lease a restarted dnsmasq remembered
  could keep an address for a port that no longer has it.

It serves no DNS (``port=0``) and drops root for ``user`` once its sockets are open.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

METADATA_CIDR = "169.254.169.254/32"
DEFAULT_LEASE_SECONDS = 86400
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class DhcpConfigError(ValueError):
    """The description of a network cannot be served safely; names what is wrong."""


@dataclass(frozen=True)
class HostRoute:
    """A subnet's ``host_routes`` entry, as Neutron's API holds it."""

    destination: str
    nexthop: str


@dataclass(frozen=True)
class DhcpSubnet:
    """An IPv4 subnet of the network with DHCP enabled (others are left out by the
    caller: dnsmasq would answer nothing for them anyway)."""

    id: str
    cidr: str
    gateway_ip: str | None = None
    dns_nameservers: tuple[str, ...] = ()
    host_routes: tuple[HostRoute, ...] = ()


@dataclass(frozen=True)
class FixedIp:
    ip_address: str
    subnet_id: str


@dataclass(frozen=True)
class DhcpPort:
    """A port bound to this hypervisor. ``hostname`` is what the guest is told
    (option 12); it must be a DNS label (Nova's sanitised hostname is one)."""

    id: str
    mac_address: str
    fixed_ips: tuple[FixedIp, ...]
    hostname: str | None = None


@dataclass(frozen=True)
class DhcpNetwork:
    """What one network's dnsmasq serves on this hypervisor.

    ``interface`` is the network's bridge here, and must carry ``server_address``
    (an address inside one of the subnets): dnsmasq serves a subnet only on an
    interface with an address in it, and that address is the server identifier
    the guests renew with. ``metadata_address``, if set, is where this host answers
    169.254.169.254; subnets without a gateway get a route to it (Neutron's
    isolated metadata), and so do all with ``force_metadata``.
    """

    network_id: str
    interface: str
    server_address: str
    mtu: int | None
    subnets: tuple[DhcpSubnet, ...]
    ports: tuple[DhcpPort, ...]
    metadata_address: str | None = None
    force_metadata: bool = False
    lease_seconds: int = DEFAULT_LEASE_SECONDS


@dataclass(frozen=True)
class RenderedConfig:
    """The three files of one network (``conf`` needs a restart to change)."""

    conf: str
    hosts: str
    opts: str
    hosts_for: dict[str, str] = field(default_factory=dict)  # mac -> ip served


def _network(cidr: str, what: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise DhcpConfigError(f"{what}: {cidr!r} is not a network ({exc})") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise DhcpConfigError(f"{what}: {cidr!r} is not IPv4 (this DHCP is IPv4 only)")
    return net


def _address(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise DhcpConfigError(f"{what}: {value!r} is not an IP address") from None
    if not isinstance(addr, ipaddress.IPv4Address):
        raise DhcpConfigError(f"{what}: {value!r} is not IPv4")
    return addr


def _tag(index: int) -> str:
    return f"subnet{index}"


def _routes(subnet: DhcpSubnet, net: DhcpNetwork) -> list[tuple[str, str]]:
    """Option 121's routes, as Neutron's DHCP agent sends them. A client that
    takes option 121 must ignore the router option (RFC 3442), so once there is
    any classless route the default route is in it too."""
    routes = [(_network(r.destination, f"subnet {subnet.id} host route").with_prefixlen,
               str(_address(r.nexthop, f"subnet {subnet.id} host route nexthop")))
              for r in subnet.host_routes]
    wants_metadata = net.force_metadata or not subnet.gateway_ip
    if (net.metadata_address and wants_metadata
            and not any(dest == METADATA_CIDR for dest, _ in routes)):
        routes.append((METADATA_CIDR, str(_address(net.metadata_address,
                                                   "metadata_address"))))
    if routes and subnet.gateway_ip and not any(d == "0.0.0.0/0" for d, _ in routes):
        routes.append(("0.0.0.0/0", subnet.gateway_ip))
    return routes


def _host_entries(net: DhcpNetwork, subnets: dict[str, ipaddress.IPv4Network]
                  ) -> dict[str, tuple[str, str | None]]:
    """mac -> (ip, hostname): each port's first address in a served subnet."""
    entries: dict[str, tuple[str, str | None]] = {}
    owner_of_ip: dict[str, str] = {}
    for port in net.ports:
        mac = port.mac_address.lower()
        if not _MAC.match(mac):
            raise DhcpConfigError(f"port {port.id}: mac_address {port.mac_address!r} "
                                  "is not a MAC address")
        if port.hostname is not None and not _LABEL.match(port.hostname):
            raise DhcpConfigError(f"port {port.id}: hostname {port.hostname!r} is not a "
                                  "DNS label")
        chosen = None
        for fixed in port.fixed_ips:
            cidr = subnets.get(fixed.subnet_id)
            if cidr is None:
                continue  # not a DHCP subnet of this network (IPv6, DHCP off)
            addr = _address(fixed.ip_address, f"port {port.id} fixed_ips")
            if addr not in cidr:
                raise DhcpConfigError(f"port {port.id}: {addr} is not in subnet "
                                      f"{fixed.subnet_id} ({cidr})")
            chosen = str(addr)
            break
        if chosen is None:
            continue
        if mac in entries:
            raise DhcpConfigError(f"port {port.id}: MAC {mac} is also another port's")
        if chosen in owner_of_ip:
            raise DhcpConfigError(f"port {port.id}: {chosen} is also port "
                                  f"{owner_of_ip[chosen]}'s")
        owner_of_ip[chosen] = port.id
        entries[mac] = (chosen, port.hostname)
    return entries


def render(net: DhcpNetwork, *, hosts_path: str, opts_path: str, pid_path: str,
           user: str, group: str | None = None, log_path: str | None = None) -> RenderedConfig:
    """The dnsmasq files for ``net``; raises :class:`DhcpConfigError` naming the
    field when the description could hand out a wrong or doubled address."""
    if not _IFNAME.match(net.interface):
        raise DhcpConfigError(f"interface {net.interface!r} is not an interface name")
    if not net.subnets:
        raise DhcpConfigError(f"network {net.network_id}: no IPv4 subnet with DHCP")
    if net.mtu is not None and not 68 <= net.mtu <= 65535:
        raise DhcpConfigError(f"network {net.network_id}: mtu {net.mtu} out of range")
    if net.lease_seconds < 120:
        raise DhcpConfigError(f"lease_seconds {net.lease_seconds} is below 120")
    server = _address(net.server_address, "server_address")
    cidrs: dict[str, ipaddress.IPv4Network] = {}
    for subnet in net.subnets:
        cidr = _network(subnet.cidr, f"subnet {subnet.id} cidr")
        if any(cidr.overlaps(other) for other in cidrs.values()):
            raise DhcpConfigError(f"subnet {subnet.id}: {cidr} overlaps another subnet")
        cidrs[subnet.id] = cidr
        if subnet.gateway_ip is not None and _address(
                subnet.gateway_ip, f"subnet {subnet.id} gateway_ip") not in cidr:
            raise DhcpConfigError(f"subnet {subnet.id}: gateway_ip {subnet.gateway_ip} "
                                  f"is outside {cidr}")
    if not any(server in c for c in cidrs.values()):
        raise DhcpConfigError(f"server_address {server} is in none of the subnets")
    entries = _host_entries(net, cidrs)
    if str(server) in {ip for ip, _ in entries.values()}:
        raise DhcpConfigError(f"server_address {server} is also a port's address")

    conf = [f"# Haven: DHCP of network {net.network_id} for this host's ports only",
            "port=0",  # no DNS service
            f"interface={net.interface}",
            "bind-interfaces",
            "except-interface=lo",
            "no-hosts",
            "no-resolv",
            "dhcp-authoritative",
            "dhcp-ignore=tag:!known",
            "leasefile-ro",
            f"dhcp-hostsfile={hosts_path}",
            f"dhcp-optsfile={opts_path}",
            f"pid-file={pid_path}",
            f"user={user}"]
    if group is not None:
        conf.append(f"group={group}")
    if log_path is not None:
        conf += [f"log-facility={log_path}", "log-dhcp"]
    for index, subnet in enumerate(net.subnets):
        cidr = cidrs[subnet.id]
        conf.append(f"dhcp-range=set:{_tag(index)},{cidr.network_address},static,"
                    f"{cidr.netmask},{net.lease_seconds}s")

    opts: list[str] = []
    for index, subnet in enumerate(net.subnets):
        tag = f"tag:{_tag(index)}"
        # An empty router option tells the guest there is none (dnsmasq would
        # otherwise offer its own address as the router).
        opts.append(f"{tag},option:router" + (f",{subnet.gateway_ip}"
                                               if subnet.gateway_ip else ""))
        dns = [str(_address(d, f"subnet {subnet.id} dns_nameservers"))
               for d in subnet.dns_nameservers]
        if dns:  # none: no option 6 (with port=0 dnsmasq never offers itself)
            opts.append(f"{tag},option:dns-server," + ",".join(dns))
        if net.mtu is not None:
            opts.append(f"{tag},option:mtu,{net.mtu}")
        routes = _routes(subnet, net)
        if routes:
            pairs = ",".join(f"{d},{h}" for d, h in routes)
            opts.append(f"{tag},option:classless-static-route,{pairs}")
            opts.append(f"{tag},249,{pairs}")  # the same for Windows clients

    hosts = [f"{mac},{ip}" + (f",{name}" if name else "")
             for mac, (ip, name) in sorted(entries.items())]
    return RenderedConfig(conf="\n".join(conf) + "\n",
                          hosts="".join(h + "\n" for h in hosts),
                          opts="".join(o + "\n" for o in opts),
                          hosts_for={mac: ip for mac, (ip, _) in entries.items()})

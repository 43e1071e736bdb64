"""The ``openstack/`` half of the metadata, shaped as Nova shapes it.

Mirrors ``nova/api/metadata/base.py`` (``_metadata_as_json``, ``_handle_version``,
``_vendor_data*``) and ``nova/virt/netutils.py`` (``get_network_metadata``):
the same keys in the same order, the same fields gated by the same versions,
so a guest tool written against Nova (cloud-init's OpenStack datasource,
cloudbase-init, glean) reads Haven's documents unchanged.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
from collections.abc import Callable
from typing import Any

from core.compute.metadata.model import FixedIP, InstanceDescription, Port, Subnet
from core.compute.metadata.versions import LATEST, Versions

FOLSOM = "2012-08-10"
GRIZZLY = "2013-04-04"
HAVANA = "2013-10-17"
LIBERTY = "2015-10-15"
NEWTON_ONE = "2016-06-30"
NEWTON_TWO = "2016-10-06"
OCATA = "2017-02-22"
ROCKY = "2018-08-27"
VICTORIA = "2020-10-14"
EPOXY = "2025-04-04"
VERSIONS = (FOLSOM, GRIZZLY, HAVANA, LIBERTY, NEWTON_ONE, NEWTON_TWO, OCATA, ROCKY,
            VICTORIA, EPOXY)
_TREE = Versions(VERSIONS)
resolve_version = _TREE.resolve
at_least = _TREE.at_least

META_DATA = "meta_data.json"
USER_DATA = "user_data"
PASSWORD = "password"
VENDOR_DATA = "vendor_data.json"
NETWORK_DATA = "network_data.json"
VENDOR_DATA2 = "vendor_data2.json"

# Nova exposes these VIF types as the link's type; any other is "phy".
EXPOSED_VIF_TYPES = frozenset({"bridge", "dvs", "hw_veb", "hyperv", "ovs", "tap", "vhostuser",
                               "vif"})


def listed_versions(today: str) -> list[str]:
    """``GET /openstack``: every version up to ``today`` (YYYY-MM-DD), then ``latest``.

    Nova hides versions dated in the future; so does this.
    """
    return [v for v in VERSIONS if v <= today] + [LATEST]


def version_listing(desc: InstanceDescription, version: str) -> list[str]:
    """``GET /openstack/<version>``: the documents that version has."""
    names = [META_DATA]
    if desc.user_data is not None:
        names.append(USER_DATA)
    if at_least(GRIZZLY, version):
        names.append(PASSWORD)
    if at_least(HAVANA, version):
        names.append(VENDOR_DATA)
    if at_least(LIBERTY, version):
        names.append(NETWORK_DATA)
    if at_least(NEWTON_TWO, version):
        names.append(VENDOR_DATA2)
    return names


def meta_data(desc: InstanceDescription, version: str,
              random: Callable[[int], bytes] = os.urandom) -> dict[str, Any]:
    """``meta_data.json`` for ``version`` (already resolved, not ``latest``)."""
    md: dict[str, Any] = {"uuid": desc.uuid}
    if desc.metadata:
        md["meta"] = dict(desc.metadata)
    if desc.keypairs:
        md["public_keys"] = {k.name: k.public_key for k in desc.keypairs}
        md["keys"] = [{"name": k.name, "type": k.type, "data": k.public_key}
                      for k in desc.keypairs]
    md["hostname"] = desc.hostname
    md["name"] = desc.name
    md["launch_index"] = desc.launch_index
    md["availability_zone"] = desc.availability_zone
    if at_least(GRIZZLY, version):
        md["random_seed"] = base64.b64encode(random(512)).decode()
    if at_least(LIBERTY, version):
        md["project_id"] = desc.project_id
    if at_least(NEWTON_ONE, version):
        md["devices"] = []  # Haven has no device role tags (yet)
    if at_least(VICTORIA, version):
        md["dedicated_cpus"] = []
    return md


def vendor_data(desc: InstanceDescription) -> dict[str, Any]:
    """``vendor_data.json``: the deployment's static vendor data (``{}`` if none)."""
    return dict(desc.vendor_data)


def vendor_data2(desc: InstanceDescription) -> dict[str, Any]:
    """``vendor_data2.json``: ``static`` plus each dynamic provider's answer by name."""
    doc: dict[str, Any] = {"static": dict(desc.vendor_data)}
    for name, value in desc.dynamic_vendor_data.items():
        if name not in doc:  # Nova drops a provider key that would overwrite another
            doc[name] = value
    return doc


# ---- network_data.json -------------------------------------------------------------------
def network_data(desc: InstanceDescription) -> dict[str, Any]:
    """``network_data.json``: links (NICs), networks (addresses), services (DNS).

    Like Nova, only the first IPv4 and the first IPv6 subnet of each port are
    described, and a subnet with DHCP enabled is just ``ipv4_dhcp`` (the guest
    asks DHCP for the rest). Nova leaves a link's MTU out only when a Neutron
    DHCP port serves the subnet; Haven's DHCP is answered by each hypervisor
    without such a port (as OVN's is), so the MTU is always given.
    """
    links: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    net_num = -1
    for port in desc.ports:
        v4 = _first(port, 4)
        v6 = _first(port, 6)
        if v4 is None and v6 is None:
            continue
        link = _link(port)
        links.append(link)
        for ip in (v4, v6):
            if ip is None:
                continue
            net_num += 1
            networks.append(_network(port, ip, net_num, link["id"]))
            services += [s for s in _dns(ip.subnet) if s not in services]
    return {"links": links, "networks": networks, "services": services}


def _first(port: Port, version: int) -> FixedIP | None:
    return next((ip for ip in port.fixed_ips if ip.subnet.version == version), None)


def _link(port: Port) -> dict[str, Any]:
    return {
        "id": port.link_id,
        "vif_id": port.id,
        "type": port.vif_type if port.vif_type in EXPOSED_VIF_TYPES else "phy",
        "mtu": port.mtu,
        "ethernet_mac_address": port.mac_address,
    }


def _network(port: Port, ip: FixedIP, num: int, link_id: str) -> dict[str, Any]:
    subnet = ip.subnet
    version = subnet.version
    suffix = ""
    if subnet.ipv6_address_mode is not None:
        suffix = f"_{subnet.ipv6_address_mode}"
    elif subnet.enable_dhcp:
        return {"id": f"network{num}", "type": f"ipv{version}_dhcp", "link": link_id,
                "network_id": port.network_id}
    net = ipaddress.ip_network(subnet.cidr, strict=False)
    routes: list[dict[str, str]] = []
    if subnet.gateway_ip:
        any_addr = "0.0.0.0" if version == 4 else "::"
        routes.append({"network": any_addr, "netmask": any_addr, "gateway": subnet.gateway_ip})
    for route in subnet.host_routes:
        dest = ipaddress.ip_network(route.destination, strict=False)
        routes.append({"network": str(dest.network_address), "netmask": str(dest.netmask),
                       "gateway": route.nexthop})
    return {
        "id": f"network{num}",
        "type": f"ipv{version}{suffix}",
        "link": link_id,
        "ip_address": ip.ip_address,
        "netmask": str(net.netmask),
        "routes": routes,
        "network_id": port.network_id,
        "services": _dns(subnet),
    }


def _dns(subnet: Subnet) -> list[dict[str, str]]:
    return [{"type": "dns", "address": a} for a in subnet.dns_nameservers]


def dumps(doc: Any) -> bytes:
    """JSON as Nova's ``jsonutils.dump_as_bytes`` writes it."""
    return json.dumps(doc).encode()

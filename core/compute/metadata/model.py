"""What the metadata service knows of one instance: the typed input of every document.

The hypervisor agent builds an :class:`InstanceDescription` for each instance it
runs (from the compute API's server, the network API's ports and subnets, the
keypair) and hands it to the service: either directly (a callable lookup) or
as the JSON file :func:`dump_instances` writes and :func:`load_instances` reads.
The JSON form is strict: an unknown or ill-typed field raises
:class:`InvalidDescription` naming it, so a writer's mistake is seen, never
guessed around (the service then serves nobody from that file).

Fields follow what Nova's documents need (``nova/api/metadata/base.py``,
``nova/virt/netutils.py``); EC2 ids, which Nova takes from integer database
ids, are derived from the uuids here (``i-`` / ``ami-`` and eight hex digits).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT = "haven-metadata/1"


class InvalidDescription(ValueError):
    """A description (or its JSON) is malformed; the message names the field."""


@dataclass(frozen=True)
class Route:
    """A subnet's host route (Neutron ``host_routes``)."""

    destination: str  # CIDR
    nexthop: str


@dataclass(frozen=True)
class Subnet:
    """The subnet of one fixed IP, as much of it as the guest is told."""

    id: str
    cidr: str
    gateway_ip: str | None = None
    dns_nameservers: tuple[str, ...] = ()
    host_routes: tuple[Route, ...] = ()
    enable_dhcp: bool = True
    ipv6_address_mode: str | None = None  # slaac, dhcpv6-stateful, dhcpv6-stateless

    @property
    def version(self) -> int:
        return ipaddress.ip_network(self.cidr, strict=False).version


@dataclass(frozen=True)
class FixedIP:
    ip_address: str
    subnet: Subnet
    floating_ip: str | None = None  # the floating IP NATed to this address, if any


@dataclass(frozen=True)
class Port:
    """One NIC of the instance: a Neutron port."""

    id: str
    mac_address: str
    network_id: str
    fixed_ips: tuple[FixedIP, ...]
    mtu: int | None = None
    vif_type: str = "bridge"  # Nova's link type: bridge, ovs, ... (else "phy")
    devname: str | None = None  # the host's tap name; Nova's "tap" + id[:11] if unset

    @property
    def link_id(self) -> str:
        return self.devname or ("tap" + self.id)[:14]


@dataclass(frozen=True)
class Keypair:
    name: str
    public_key: str
    type: str = "ssh"


@dataclass(frozen=True)
class InstanceDescription:
    """Everything the metadata documents of one instance are made of."""

    uuid: str
    name: str  # the display name
    hostname: str
    project_id: str
    ports: tuple[Port, ...]
    availability_zone: str = "nova"
    launch_index: int = 0
    flavor_name: str = ""
    image_id: str = ""
    keypairs: tuple[Keypair, ...] = ()
    user_data: bytes | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)  # server metadata ("meta")
    security_groups: tuple[str, ...] = ()
    root_device_name: str = "/dev/vda"
    # Nova's StaticJSON vendor data, and the DynamicJSON providers' answers by name.
    vendor_data: Mapping[str, Any] = field(default_factory=dict)
    dynamic_vendor_data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ec2_instance_id(self) -> str:
        return "i-" + _hex8(self.uuid)

    @property
    def ec2_ami_id(self) -> str:
        return "ami-" + _hex8(self.image_id) if self.image_id else "ami-00000000"

    @property
    def reservation_id(self) -> str:
        return "r-" + _hex8(self.uuid[9:] if len(self.uuid) > 9 else self.uuid)

    def owns(self, network_id: str, address: str) -> bool:
        """Whether one of this instance's ports holds ``address`` on ``network_id``."""
        want = _ip(address)
        return any(port.network_id == network_id and
                   any(_ip(ip.ip_address) == want for ip in port.fixed_ips)
                   for port in self.ports)


def _hex8(value: str) -> str:
    digits = re.sub(r"[^0-9a-f]", "", value.lower())
    return (digits + "0" * 8)[:8]


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def sanitize_hostname(display_name: str, default: str = "server") -> str:
    """A hostname from a display name, as Nova's ``utils.sanitize_hostname`` makes it.

    Characters beyond Latin-1 are dropped, the name cut to 63 characters,
    spaces, underscores and dots become dashes, other non-word characters are
    dropped, and the result is lower-cased and stripped of dots and dashes at
    either end; ``default`` when nothing is left (Nova passes ``Server-<uuid>``).
    """
    name = display_name.encode("latin-1", "ignore").decode("latin-1")[:63]
    name = re.sub(r"[ _.]", "-", name)
    name = re.sub(r"[^\w.-]+", "", name)
    name = name.lower().strip(".-")
    return name or default[:63]


# ---- the JSON form -----------------------------------------------------------------------
def to_json(desc: InstanceDescription) -> dict[str, Any]:
    """The JSON-able form of a description (``user_data`` base64-encoded)."""
    return {
        "uuid": desc.uuid,
        "name": desc.name,
        "hostname": desc.hostname,
        "project_id": desc.project_id,
        "availability_zone": desc.availability_zone,
        "launch_index": desc.launch_index,
        "flavor_name": desc.flavor_name,
        "image_id": desc.image_id,
        "keypairs": [{"name": k.name, "type": k.type, "public_key": k.public_key}
                     for k in desc.keypairs],
        "user_data": (base64.b64encode(desc.user_data).decode()
                      if desc.user_data is not None else None),
        "metadata": dict(desc.metadata),
        "security_groups": list(desc.security_groups),
        "root_device_name": desc.root_device_name,
        "vendor_data": dict(desc.vendor_data),
        "dynamic_vendor_data": dict(desc.dynamic_vendor_data),
        "ports": [_port_json(p) for p in desc.ports],
    }


def _port_json(port: Port) -> dict[str, Any]:
    return {
        "id": port.id, "mac_address": port.mac_address, "network_id": port.network_id,
        "mtu": port.mtu, "vif_type": port.vif_type, "devname": port.devname,
        "fixed_ips": [{
            "ip_address": ip.ip_address, "floating_ip": ip.floating_ip,
            "subnet": {
                "id": ip.subnet.id, "cidr": ip.subnet.cidr, "gateway_ip": ip.subnet.gateway_ip,
                "dns_nameservers": list(ip.subnet.dns_nameservers),
                "host_routes": [{"destination": r.destination, "nexthop": r.nexthop}
                                for r in ip.subnet.host_routes],
                "enable_dhcp": ip.subnet.enable_dhcp,
                "ipv6_address_mode": ip.subnet.ipv6_address_mode,
            },
        } for ip in port.fixed_ips],
    }


class _Reader:
    """Typed reads from one JSON object, each failure naming the field's full path."""

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise InvalidDescription(f"{where or 'description'}: expected an object")
        self.obj = obj
        self.where = where
        self.used: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...,
            nullable: bool = False) -> Any:
        self.used.add(key)
        if key not in self.obj:
            if default is ...:
                raise InvalidDescription(f"{self._name(key)}: missing")
            return default
        value = self.obj[key]
        if value is None and nullable:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise InvalidDescription(f"{self._name(key)}: wrong type")
        if not isinstance(value, kinds):
            raise InvalidDescription(f"{self._name(key)}: wrong type")
        return value

    def child(self, key: str, index: int | None = None) -> str:
        return self._name(key) + (f"[{index}]" if index is not None else "")

    def done(self) -> None:
        extra = sorted(set(self.obj) - self.used)
        if extra:
            raise InvalidDescription(f"{self._name(extra[0])}: unknown field")


def _strs(values: Any, where: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in values):
        raise InvalidDescription(f"{where}: expected strings")
    return tuple(values)


def _checked_ip(value: str, where: str) -> str:
    if _ip(value) is None:
        raise InvalidDescription(f"{where}: not an IP address")
    return value


def from_json(obj: Any, where: str = "") -> InstanceDescription:
    """A description from its JSON form; :class:`InvalidDescription` if malformed."""
    r = _Reader(obj, where)
    raw_ud = r.get("user_data", str, None, nullable=True)
    user_data = None
    if raw_ud is not None:
        try:
            user_data = base64.b64decode(raw_ud, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidDescription(f"{r.child('user_data')}: not base64") from None
    uuid = r.get("uuid", str)
    try:
        uuidlib.UUID(uuid)
    except ValueError:
        raise InvalidDescription(f"{r.child('uuid')}: not a uuid") from None
    metadata = r.get("metadata", dict, {})
    if not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidDescription(f"{r.child('metadata')}: values must be strings")
    keypairs = []
    for i, raw in enumerate(r.get("keypairs", list, [])):
        k = _Reader(raw, r.child("keypairs", i))
        keypairs.append(Keypair(k.get("name", str), k.get("public_key", str),
                                k.get("type", str, "ssh")))
        k.done()
    ports = tuple(_port(raw, r.child("ports", i))
                  for i, raw in enumerate(r.get("ports", list)))
    launch_index = r.get("launch_index", int, 0)
    desc = InstanceDescription(
        uuid=uuid, name=r.get("name", str), hostname=r.get("hostname", str),
        project_id=r.get("project_id", str), ports=ports,
        availability_zone=r.get("availability_zone", str, "nova"),
        launch_index=launch_index, flavor_name=r.get("flavor_name", str, ""),
        image_id=r.get("image_id", str, ""), keypairs=tuple(keypairs), user_data=user_data,
        metadata=dict(metadata),
        security_groups=_strs(r.get("security_groups", list, []), r.child("security_groups")),
        root_device_name=r.get("root_device_name", str, "/dev/vda"),
        vendor_data=r.get("vendor_data", dict, {}),
        dynamic_vendor_data=r.get("dynamic_vendor_data", dict, {}),
    )
    r.done()
    return desc


def _port(obj: Any, where: str) -> Port:
    r = _Reader(obj, where)
    fixed = []
    for i, raw in enumerate(r.get("fixed_ips", list)):
        f = _Reader(raw, r.child("fixed_ips", i))
        s = _Reader(f.get("subnet", dict), f.child("subnet"))
        cidr = s.get("cidr", str)
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise InvalidDescription(f"{s.child('cidr')}: not a CIDR") from None
        routes = []
        for j, raw_route in enumerate(s.get("host_routes", list, [])):
            rr = _Reader(raw_route, s.child("host_routes", j))
            routes.append(Route(rr.get("destination", str),
                                _checked_ip(rr.get("nexthop", str), rr.child("nexthop"))))
            rr.done()
        gateway = s.get("gateway_ip", str, None, nullable=True)
        subnet = Subnet(
            id=s.get("id", str), cidr=cidr,
            gateway_ip=_checked_ip(gateway, s.child("gateway_ip")) if gateway else None,
            dns_nameservers=tuple(_checked_ip(d, s.child("dns_nameservers")) for d in
                                  _strs(s.get("dns_nameservers", list, []),
                                        s.child("dns_nameservers"))),
            host_routes=tuple(routes), enable_dhcp=s.get("enable_dhcp", bool, True),
            ipv6_address_mode=s.get("ipv6_address_mode", str, None, nullable=True))
        s.done()
        floating = f.get("floating_ip", str, None, nullable=True)
        fixed.append(FixedIP(
            _checked_ip(f.get("ip_address", str), f.child("ip_address")), subnet,
            _checked_ip(floating, f.child("floating_ip")) if floating else None))
        f.done()
    port = Port(id=r.get("id", str), mac_address=r.get("mac_address", str),
                network_id=r.get("network_id", str), fixed_ips=tuple(fixed),
                mtu=r.get("mtu", int, None, nullable=True),
                vif_type=r.get("vif_type", str, "bridge"),
                devname=r.get("devname", str, None, nullable=True))
    r.done()
    return port


def dump_instances(descs: list[InstanceDescription]) -> dict[str, Any]:
    """The document of a hypervisor's instances file (see :mod:`lookup`)."""
    return {"format": FORMAT, "instances": [to_json(d) for d in descs]}


def load_instances(doc: Any) -> list[InstanceDescription]:
    """The descriptions in an instances file; :class:`InvalidDescription` if any is bad."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidDescription(f"format: expected {FORMAT!r}")
    raw = doc.get("instances")
    if not isinstance(raw, list):
        raise InvalidDescription("instances: expected an array")
    return [from_json(item, f"instances[{i}]") for i, item in enumerate(raw)]

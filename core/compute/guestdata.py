"""What a guest is told about itself, assembled by its hypervisor's compute agent.

The metadata service and the config drive (:mod:`core.compute.metadata`) are handed
one :class:`InstanceDescription`; this module makes it from compute's own database
(the instance, its server metadata, its flavor's name, its key and user data) and
from the network API (the port, its subnets, a floating IP, security group names),
asked with the service user's token.

:class:`HostLookup` is the metadata service's lookup on a hypervisor: a request
from ``source_ip`` on ``network_id`` is for the instance whose port, bound to this
host, holds that address, and whose record on this host names that port. Anything
that cannot be asked (the network API or the database unreachable) raises, which
the metadata app answers with 503: never a guess, never an old answer.

The key and user data columns come from the keypairs work on the instance
(``key_name``, ``key_data``, ``user_data``, ``config_drive``); they are read with
``getattr`` so a database without them describes an instance without them.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.common.clients import ServiceClients
from core.common.db import Database
from core.common.hostnet import tap_name
from core.compute.metadata.model import (
    FixedIP,
    InstanceDescription,
    Keypair,
    Port,
    Subnet,
    sanitize_hostname,
)
from core.compute.models import Flavor, Instance, InstanceMetadata

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceRecord:
    """Compute's side of an instance: the row, its metadata and its flavor's name."""

    instance: Instance
    metadata: dict[str, str]
    flavor_name: str


def load_record(sess: Session, instance_id: str) -> InstanceRecord | None:
    inst = sess.get(Instance, instance_id)
    if inst is None or inst.deleted:
        return None
    meta = {m.key: m.value for m in sess.scalars(
        select(InstanceMetadata).where(InstanceMetadata.instance_id == instance_id))}
    flavor = sess.get(Flavor, inst.flavor_id)
    return InstanceRecord(inst, meta, flavor.name if flavor is not None else "")


def wants_config_drive(inst: Instance, forced: bool) -> bool:
    """Whether the instance gets a config drive (asked for at create, or forced)."""
    return forced or bool(getattr(inst, "config_drive", False))


def _user_data(inst: Instance) -> bytes | None:
    raw = getattr(inst, "user_data", None)
    if not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        # the compute API refuses user data that is not base64; a row that holds some
        # anyway is served as it is rather than dropped
        LOG.error("user data of %s is not base64; served as stored", inst.id)
        return str(raw).encode()


def _keypairs(inst: Instance) -> tuple[Keypair, ...]:
    name = getattr(inst, "key_name", None)
    data = getattr(inst, "key_data", None)
    if not name or not data:
        return ()
    return (Keypair(name=str(name), public_key=str(data)),)


class NetworkReader:
    """The network API's answers for one description, each object asked once."""

    def __init__(self, clients: ServiceClients) -> None:
        self.clients = clients
        self._subnets: dict[str, dict[str, Any]] = {}
        self._mtus: dict[str, int | None] = {}

    def get(self, path: str) -> dict[str, Any]:
        return dict(self.clients.request("GET", "network", path).json())

    def subnet(self, subnet_id: str) -> dict[str, Any]:
        if subnet_id not in self._subnets:
            self._subnets[subnet_id] = self.get(f"/v2.0/subnets/{subnet_id}")["subnet"]
        return self._subnets[subnet_id]

    def mtu(self, network_id: str) -> int | None:
        if network_id not in self._mtus:
            mtu = self.get(f"/v2.0/networks/{network_id}")["network"].get("mtu")
            self._mtus[network_id] = int(mtu) if isinstance(mtu, int) and mtu > 0 else None
        return self._mtus[network_id]

    def floating(self, port_id: str) -> dict[str, str]:
        """fixed IP -> floating IP for the port."""
        fips = self.get("/v2.0/floatingips?" + urlencode({"port_id": port_id}))["floatingips"]
        return {str(f["fixed_ip_address"]): str(f["floating_ip_address"]) for f in fips
                if f.get("fixed_ip_address") and f.get("floating_ip_address")}

    def group_names(self, group_ids: list[str]) -> tuple[str, ...]:
        names = []
        for gid in group_ids:
            group = self.get(f"/v2.0/security-groups/{gid}")["security_group"]
            names.append(str(group.get("name") or gid))
        return tuple(names)


def _subnet(raw: dict[str, Any]) -> Subnet:
    return Subnet(id=str(raw["id"]), cidr=str(raw["cidr"]), gateway_ip=raw.get("gateway_ip"),
                  dns_nameservers=tuple(raw.get("dns_nameservers") or ()),
                  enable_dhcp=bool(raw.get("enable_dhcp", True)),
                  ipv6_address_mode=raw.get("ipv6_address_mode"))


def describe_port(net: NetworkReader, port: dict[str, Any]) -> Port:
    floating = net.floating(str(port["id"]))
    fixed = tuple(
        FixedIP(ip_address=str(ip["ip_address"]), subnet=_subnet(net.subnet(ip["subnet_id"])),
                floating_ip=floating.get(str(ip["ip_address"])))
        for ip in port.get("fixed_ips") or ())
    return Port(id=str(port["id"]), mac_address=str(port["mac_address"]),
                network_id=str(port["network_id"]), fixed_ips=fixed,
                mtu=net.mtu(str(port["network_id"])), vif_type="tap",
                devname=tap_name(str(port["id"])))


def describe(clients: ServiceClients, record: InstanceRecord,
             port: dict[str, Any] | None = None) -> InstanceDescription:
    """The description of ``record``'s instance; ``port`` if already read (else asked).
    Raises ServiceCallError when the network API cannot answer."""
    inst = record.instance
    net = NetworkReader(clients)
    ports: tuple[Port, ...] = ()
    groups: tuple[str, ...] = ()
    if inst.port_id:
        raw = port if port is not None else net.get(f"/v2.0/ports/{inst.port_id}")["port"]
        ports = (describe_port(net, raw),)
        groups = net.group_names(list(raw.get("security_groups") or ()))
    return InstanceDescription(
        uuid=inst.id, name=inst.name,
        hostname=sanitize_hostname(inst.name, default=f"Server-{inst.id}"),
        project_id=inst.project_id, ports=ports, flavor_name=record.flavor_name,
        image_id=inst.image_id or "", keypairs=_keypairs(inst), user_data=_user_data(inst),
        metadata=dict(record.metadata), security_groups=groups)


class HostLookup:
    """The metadata lookup of one hypervisor (see the module docstring); wrap it in
    :class:`core.compute.metadata.lookup.CallableLookup`, which also checks the answer
    holds the address."""

    def __init__(self, clients: ServiceClients, db: Database, host: str) -> None:
        self.clients = clients
        self.db = db
        self.host = host

    def __call__(self, network_id: str, source_ip: str) -> InstanceDescription | None:
        try:
            wanted = ipaddress.ip_address(source_ip)
        except ValueError:
            return None
        query = urlencode({"network_id": network_id, "binding:host_id": self.host})
        found = self.clients.request("GET", "network", f"/v2.0/ports?{query}").json()["ports"]
        holders = [p for p in found
                   if any(_same(ip.get("ip_address"), wanted) for ip in p.get("fixed_ips") or ())]
        if len(holders) != 1:
            return None
        port = holders[0]
        device = str(port.get("device_id") or "")
        if not device:
            return None
        record = self.db.run_in_transaction(lambda s: load_record(s, device))
        if record is None or record.instance.host != self.host or \
                record.instance.port_id != port["id"]:
            return None
        return describe(self.clients, record, port)


def _same(address: Any, wanted: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(str(address)) == wanted
    except ValueError:
        return False

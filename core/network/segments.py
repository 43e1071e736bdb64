"""Network segments: which network type and segmentation id a network gets, and its MTU.

Neutron's ml2 type drivers in one small module. A tenant's network gets the
configured tenant type (vxlan by default) with an id allocated from the
configured ranges; an administrator may choose ``provider:network_type``,
``provider:physical_network`` and ``provider:segmentation_id``:

* flat: a physical network, once (the physical network's L2 is the network's);
* vlan: a physical network of ``network_vlan_ranges`` and an id 1..4094 (a tenant
  network draws from the ranges; an administrator may also name an id outside);
* vxlan: a VNI 1..2^24-1, no physical network.

An id is held by a row of :class:`NetworkSegment`; its unique key decides races
(:func:`_try_hold`), and the network's delete frees it (ON DELETE CASCADE).
Nothing free: 503, as Neutron's ``NoNetworkAvailable``. MTU: the underlay's, less
the VXLAN overhead (50 bytes over IPv4, 70 over IPv6) for vxlan.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.common.config import ConfigError, SegmentsConfig
from core.common.faults import BadRequest, Conflict, Fault
from core.network.segment_models import NetworkSegment

LOG = logging.getLogger(__name__)
TYPES = ("flat", "vlan", "vxlan")
MAX_VLAN = 4094
MAX_VNI = 2**24 - 1
VXLAN_OVERHEAD = {4: 50, 6: 70}  # outer Ethernet 14 + IP 20/40 + UDP 8 + VXLAN 8
PROVIDER_KEYS = ("provider:network_type", "provider:physical_network",
                 "provider:segmentation_id")


class NoNetworkAvailable(Fault):
    """Every id of the ranges is taken (Neutron answers 503 too)."""

    status = 503
    neutron_type = "NoNetworkAvailable"


Range = tuple[int, int]


@dataclass(frozen=True)
class SegmentPolicy:
    """The parsed ``network.segments`` section."""

    tenant_type: str
    vni_ranges: tuple[Range, ...]
    vlan_ranges: Mapping[str, tuple[Range, ...]]  # physnet -> tenant ranges (may be empty)
    flat_networks: frozenset[str] | None  # None: any physical network
    physnet_mtu: int
    overlay_ip_version: int

    def mtu(self, network_type: str) -> int:
        if network_type == "vxlan":
            return self.physnet_mtu - VXLAN_OVERHEAD[self.overlay_ip_version]
        return self.physnet_mtu


def _range(key: str, text: str, low: int, high: int) -> Range:
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"{key}: must be MIN:MAX, got {text!r}")
    first, last = int(parts[0]), int(parts[1])
    if not low <= first <= last <= high:
        raise ConfigError(f"{key}: must satisfy {low} <= MIN <= MAX <= {high}, got {text!r}")
    return first, last


def parse(cfg: SegmentsConfig) -> SegmentPolicy:
    """The section, checked: a ConfigError naming the key of a bad range."""
    prefix = "network.segments."
    vnis = tuple(_range(f"{prefix}vni_ranges[{i}]", r, 1, MAX_VNI)
                 for i, r in enumerate(cfg.vni_ranges))
    vlans: dict[str, list[Range]] = {}
    for i, entry in enumerate(cfg.network_vlan_ranges):
        physnet, sep, rest = entry.partition(":")
        if not physnet:
            raise ConfigError(f"{prefix}network_vlan_ranges[{i}]: no physical network "
                              f"in {entry!r}")
        ranges = vlans.setdefault(physnet, [])
        if sep:
            ranges.append(_range(f"{prefix}network_vlan_ranges[{i}]", rest, 1, MAX_VLAN))
    flat = None if "*" in cfg.flat_networks else frozenset(cfg.flat_networks)
    if cfg.tenant_network_type == "vlan" and not any(vlans.values()):
        raise ConfigError(f"{prefix}tenant_network_type: vlan needs a VLAN range in "
                          "network_vlan_ranges")
    if cfg.tenant_network_type == "vxlan" and not vnis:
        raise ConfigError(f"{prefix}tenant_network_type: vxlan needs vni_ranges")
    return SegmentPolicy(cfg.tenant_network_type, vnis,
                         {k: tuple(v) for k, v in vlans.items()}, flat,
                         cfg.global_physnet_mtu, cfg.overlay_ip_version)


@dataclass(frozen=True)
class SegmentRequest:
    """What a create asked for (None: let Haven choose)."""

    network_type: str | None = None
    physical_network: str | None = None
    segmentation_id: int | None = None

    @property
    def empty(self) -> bool:
        return self.network_type is None and self.physical_network is None and (
            self.segmentation_id is None)


def request_from(body: Mapping[str, Any]) -> SegmentRequest:
    """The provider attributes of a create body, type-checked (400 naming the field)."""
    unknown = sorted(k for k in body if k.startswith("provider:") and k not in PROVIDER_KEYS)
    if unknown:
        raise BadRequest(f"Invalid input for field '{unknown[0]}': unknown attribute.")
    kinds = {"provider:network_type": str, "provider:physical_network": str,
             "provider:segmentation_id": int}
    values: dict[str, Any] = {}
    for key, kind in kinds.items():
        value = body.get(key)
        if kind is int and isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # Neutron converts; the stock CLI sends a string
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise BadRequest(f"Invalid input for field '{key}': expected "
                             f"{'integer' if kind is int else 'string'}.")
        values[key] = value
    return SegmentRequest(values["provider:network_type"], values["provider:physical_network"],
                          values["provider:segmentation_id"])


def _bad(key: str, why: str) -> BadRequest:
    return BadRequest(f"Invalid input for field 'provider:{key}': {why}")


def validate(policy: SegmentPolicy, req: SegmentRequest) -> SegmentRequest:
    """The request completed with the tenant type and checked (400 naming the field);
    a physical network or id still None is for :func:`allocate` to choose."""
    kind = req.network_type
    if kind is None:
        if not req.empty:
            raise _bad("network_type", "required with a physical network or a "
                       "segmentation id.")
        kind = policy.tenant_type
    if kind not in TYPES:
        raise _bad("network_type", f"{kind!r} is not one of {', '.join(TYPES)}.")
    physnet, seg = req.physical_network, req.segmentation_id
    if kind == "flat":
        if not physnet:
            raise _bad("physical_network", "a flat network needs one.")
        if policy.flat_networks is not None and physnet not in policy.flat_networks:
            raise _bad("physical_network", f"{physnet!r} is not a flat physical network "
                       "of this cloud.")
        if seg is not None:
            raise _bad("segmentation_id", "a flat network has none.")
    elif kind == "vlan":
        if physnet is not None and physnet not in policy.vlan_ranges:
            raise _bad("physical_network", f"{physnet!r} is not a VLAN physical network "
                       "of this cloud.")
        if seg is not None:
            if physnet is None:
                raise _bad("physical_network", "required with a VLAN segmentation id.")
            if not 1 <= seg <= MAX_VLAN:
                raise _bad("segmentation_id", f"{seg} is not a VLAN id (1..{MAX_VLAN}).")
    else:
        if physnet is not None:
            raise _bad("physical_network", "a vxlan network has none.")
        if seg is not None and not 1 <= seg <= MAX_VNI:
            raise _bad("segmentation_id", f"{seg} is not a VNI (1..{MAX_VNI}).")
    return SegmentRequest(kind, physnet, seg)


def _try_hold(session: Session, network_id: str, kind: str, physnet: str, seg: int) -> bool:
    try:
        with session.begin_nested():
            session.add(NetworkSegment(network_id=network_id, network_type=kind,
                                       physical_network=physnet, segmentation_id=seg))
        return True
    except IntegrityError:
        return False


def _nth(ranges: tuple[Range, ...], n: int) -> int:
    for first, last in ranges:
        if n <= last - first:
            return first + n
        n -= last - first + 1
    raise IndexError(n)


def _pick(session: Session, network_id: str, kind: str, physnet: str,
          ranges: tuple[Range, ...]) -> int | None:
    """Hold a free id of ``ranges``: from a random start (concurrent creates rarely
    collide), walking to the next free one; an id taken concurrently is skipped."""
    used = set(session.scalars(select(NetworkSegment.segmentation_id).where(
        NetworkSegment.network_type == kind, NetworkSegment.physical_network == physnet)))
    size = sum(last - first + 1 for first, last in ranges)
    for _ in range(64):
        if size == 0:
            return None
        start = random.randrange(size)
        for step in range(size):
            candidate = _nth(ranges, (start + step) % size)
            if candidate not in used:
                break
        else:
            return None  # every id of the ranges is held
        if _try_hold(session, network_id, kind, physnet, candidate):
            return candidate
        used.add(candidate)
    return None


def allocate(session: Session, policy: SegmentPolicy, network_id: str,
             req: SegmentRequest) -> NetworkSegment:
    """Hold the segment ``req`` (validated) asks for: 409 if its id is taken, 503 if
    none of the ranges is free."""
    kind = req.network_type or policy.tenant_type
    physnet = req.physical_network or ""
    if req.segmentation_id is not None or kind == "flat":
        seg = req.segmentation_id or 0
        if not _try_hold(session, network_id, kind, physnet, seg):
            what = (f"physical network {physnet} is in use by a flat network"
                    if kind == "flat" else f"{kind} id {seg} is in use")
            field = "physical_network" if kind == "flat" else "segmentation_id"
            raise Conflict(f"Unable to create the network: provider:{field}: {what}.")
    else:
        pools: list[tuple[str, tuple[Range, ...]]]  # (physical network, its ranges)
        if kind == "vxlan":
            pools = [("", policy.vni_ranges)]
        else:  # vlan: the named physical network's ranges, or any's
            names = [physnet] if physnet else sorted(policy.vlan_ranges)
            pools = [(name, policy.vlan_ranges.get(name, ())) for name in names]
        for pool_net, ranges in pools:
            if _pick(session, network_id, kind, pool_net, ranges) is not None:
                break
        else:
            raise NoNetworkAvailable("Unable to create the network. No tenant network is "
                                     "available for allocation.")
    found = session.get(NetworkSegment, network_id)
    assert found is not None
    return found


def adopt_unsegmented(session: Session, policy: SegmentPolicy) -> list[str]:
    """Give each network made before segments existed its segment; the ids adopted.

    Such a network's guests had no data path (their taps were never plugged), so
    nothing they use changes: one that names a physical network becomes that flat
    network (if no other holds it: then it is left without a segment, logged, and
    carried by no hypervisor), any other a tenant network of the configured type,
    with that type's MTU. Idempotent: a network with a segment is not looked at.
    """
    from core.network.models import Network  # the part's own model

    adopted = []
    unsegmented = session.scalars(select(Network).where(~Network.id.in_(
        select(NetworkSegment.network_id))).order_by(Network.created_at))
    for net in unsegmented:
        if net.physical_network:
            try:
                allocate(session, policy, net.id, validate(policy, SegmentRequest(
                    "flat", net.physical_network)))
            except Fault as refused:
                LOG.warning("network %s keeps no segment: %s", net.id, refused.message)
                continue
            net.network_type = "flat"
        else:
            wanted = validate(policy, SegmentRequest())
            allocate(session, policy, net.id, wanted)
            net.network_type = policy.tenant_type
            net.mtu = policy.mtu(policy.tenant_type)
        adopted.append(net.id)
    return adopted


def segment_of(session: Session, network_id: str) -> NetworkSegment | None:
    return session.get(NetworkSegment, network_id)


def present(view: dict[str, Any], segment: NetworkSegment | None, is_admin: bool
            ) -> dict[str, Any]:
    """``view`` with the provider attributes an admin sees, or without them (Neutron's
    policy: a non-admin's view has no provider attributes at all)."""
    if not is_admin:
        for key in PROVIDER_KEYS:
            view.pop(key, None)
        return view
    if segment is not None:
        view["provider:network_type"] = segment.network_type
        view["provider:physical_network"] = segment.physical_network or None
        view["provider:segmentation_id"] = segment.segmentation_id or None
    return view

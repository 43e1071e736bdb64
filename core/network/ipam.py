"""IP address management: pick a free address of a subnet and hold it.

A subnet hands out addresses from its allocation pools (none, one or several,
never overlapping: :mod:`core.network.allocation_pools`), never its gateway.
Candidates are drawn at random from the free addresses of all its pools (not the
lowest), so concurrent creates on different API processes rarely pick the same
one; when they do, the unique key on (subnet, address) makes one of them fail,
inside a savepoint, and it simply tries another address.
"""

from __future__ import annotations

import bisect
import ipaddress
import random
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.common.faults import BadRequest, Conflict
from core.network.allocation_pools import Pool
from core.network.models import AllocationPool, IPAllocation, Subnet


def pools_of(subnet: Subnet) -> list[Pool]:
    """The subnet's pools as integer ranges, by address."""
    return sorted((int(ipaddress.IPv4Address(p.first_ip)), int(ipaddress.IPv4Address(p.last_ip)))
                  for p in subnet.allocation_pools)


def set_pools(subnet: Subnet, pools: Sequence[Pool]) -> None:
    """Make ``pools`` the subnet's (checked already). A pool keeping its first address
    is the same row, changed in place (its key is the subnet and that address)."""
    wanted = {str(ipaddress.IPv4Address(a)): str(ipaddress.IPv4Address(b)) for a, b in pools}
    kept = []
    for row in subnet.allocation_pools:
        if row.first_ip in wanted:
            row.last_ip = wanted.pop(row.first_ip)
            kept.append(row)
    subnet.allocation_pools = kept + [AllocationPool(first_ip=a, last_ip=b)
                                      for a, b in wanted.items()]


def _in_pools(pools: Sequence[Pool], addr: int) -> bool:
    return any(first <= addr <= last for first, last in pools)


def reserved(subnet: Subnet, address: str) -> bool:
    """True for the subnet's gateway and addresses outside its allocation pools: the
    ones an automatic allocation never hands out, so only an administrator may ask
    for them."""
    addr = int(ipaddress.ip_address(address))
    gateway = subnet.gateway_ip
    return not _in_pools(pools_of(subnet), addr) or (
        gateway is not None and addr == int(ipaddress.ip_address(gateway)))


class _Span:
    """The addresses of several ranges numbered 0..size-1 (so one random index picks
    uniformly among all of them)."""

    def __init__(self, pools: Sequence[Pool]) -> None:
        self.pools = list(pools)
        self.offsets: list[int] = []
        self.size = 0
        for first, last in self.pools:
            self.offsets.append(self.size)
            self.size += last - first + 1

    def address(self, index: int) -> int:
        i = bisect.bisect_right(self.offsets, index) - 1
        return self.pools[i][0] + index - self.offsets[i]


def allocate(session: Session, subnet: Subnet, port_id: str, wanted: str | None = None) -> str:
    """Hold an address of ``subnet`` for ``port_id``: ``wanted`` or a free one."""
    if wanted is not None:
        try:
            addr = ipaddress.ip_address(wanted)
        except ValueError:
            raise BadRequest(f"Invalid input for field 'ip_address': {wanted!r}") from None
        if addr not in ipaddress.ip_network(subnet.cidr):
            raise BadRequest(f"IP address {wanted} is not in subnet {subnet.cidr}.")
        if not _try_hold(session, subnet.id, str(addr), port_id):
            raise Conflict(f"IP address {wanted} already allocated in subnet {subnet.id}.")
        return str(addr)
    pools = pools_of(subnet)
    span = _Span(pools)
    # only the pools' own: addresses held outside them (an admin's, or kept when the
    # pools changed) must not count against what is left in them
    used = {n for n in (int(ipaddress.ip_address(a)) for a in session.scalars(
        select(IPAllocation.ip_address).where(IPAllocation.subnet_id == subnet.id)))
        if _in_pools(pools, n)}
    gateway = int(ipaddress.ip_address(subnet.gateway_ip)) if subnet.gateway_ip else None
    size = span.size
    for _ in range(64):
        free = size - len(used)
        if free <= 0:
            break
        start = random.randrange(size)
        candidate = span.address(start)
        if candidate in used or candidate == gateway:
            # walk to the next free address from the random start (a pool kept from
            # before pools were checked may still hold the gateway: never hand it out)
            for step in range(size):
                c = span.address((start + step) % size)
                if c not in used and c != gateway:
                    candidate = c
                    break
            else:
                break
        text = str(ipaddress.ip_address(candidate))
        if _try_hold(session, subnet.id, text, port_id):
            return text
        used.add(candidate)  # taken concurrently: try another
    raise Conflict(f"No more IP addresses available on subnet {subnet.id}.")


def _try_hold(session: Session, subnet_id: str, address: str, port_id: str) -> bool:
    try:
        with session.begin_nested():
            session.add(IPAllocation(subnet_id=subnet_id, ip_address=address, port_id=port_id))
        return True
    except IntegrityError:
        return False


def requested_ips(requested: list[Any] | None, subnets: list[Subnet], network_id: str,
                  name: str = "fixed_ips") -> list[tuple[Subnet, str | None]]:
    """A ``fixed_ips``-shaped request (a port's, a router gateway's
    ``external_fixed_ips``: the field's ``name``) as (subnet, address or None), checked:
    400 naming the entry that names no subnet of the network or is not an address."""
    out: list[tuple[Subnet, str | None]] = []
    for i, ip in enumerate(requested or []):
        if not isinstance(ip, dict):
            raise BadRequest(f"Invalid input for field '{name}[{i}]': an object.")
        unknown = sorted(set(ip) - {"subnet_id", "ip_address"})
        if unknown:
            raise BadRequest(f"Invalid input for field '{name}[{i}].{unknown[0]}': "
                             "not supported.")
        sub_id = ip.get("subnet_id")
        candidates = [s for s in subnets if sub_id in (None, s.id)]
        if not candidates:
            raise BadRequest(f"Invalid input for field '{name}[{i}].subnet_id': "
                             f"no subnet {sub_id} on network {network_id}.")
        address = ip.get("ip_address")
        if address is None:
            out.append((candidates[0], None))
            continue
        try:
            wanted = ipaddress.ip_address(str(address))
        except ValueError:
            raise BadRequest(f"Invalid input for field '{name}[{i}].ip_address'"
                             f": {address!r} is not an IP address.") from None
        inside = [s for s in candidates if wanted in ipaddress.ip_network(s.cidr)]
        if not inside:
            raise BadRequest(f"Invalid input for field '{name}[{i}].ip_address': "
                             f"{wanted} is in no subnet of network {network_id}.")
        out.append((inside[0], str(wanted)))
    return out

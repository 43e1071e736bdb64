"""IP address management: pick a free address of a subnet and hold it.

Candidates are drawn at random from the free addresses (not the lowest), so
concurrent creates on different API processes rarely pick the same one; when
they do, the unique key on (subnet, address) makes one of them fail, inside a
savepoint, and it simply tries another address.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.common.faults import BadRequest, Conflict
from core.network.models import IPAllocation, Subnet


def pool_addresses(subnet: Subnet) -> tuple[int, int]:
    return int(ipaddress.ip_address(subnet.pool_start)), int(ipaddress.ip_address(subnet.pool_end))


def default_pool(cidr: str, gateway: str | None) -> tuple[str, str]:
    net = ipaddress.ip_network(cidr)
    first = int(net.network_address) + 1
    last = int(net.broadcast_address) - 1
    if gateway is not None and int(ipaddress.ip_address(gateway)) == first:
        first += 1
    return str(ipaddress.ip_address(first)), str(ipaddress.ip_address(last))


def reserved(subnet: Subnet, address: str) -> bool:
    """True for the subnet's gateway and addresses outside its allocation pool: the ones
    an automatic allocation never hands out, so only an administrator may ask for them."""
    addr = int(ipaddress.ip_address(address))
    first, last = pool_addresses(subnet)
    gateway = subnet.gateway_ip
    return not first <= addr <= last or (
        gateway is not None and addr == int(ipaddress.ip_address(gateway)))


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
    first, last = pool_addresses(subnet)
    # only the pool's own: addresses held outside it (an admin's, or kept when the
    # pool changed) must not count against what is left in it
    used = {n for n in (int(ipaddress.ip_address(a)) for a in session.scalars(
        select(IPAllocation.ip_address).where(IPAllocation.subnet_id == subnet.id)))
        if first <= n <= last}
    gateway = int(ipaddress.ip_address(subnet.gateway_ip)) if subnet.gateway_ip else None
    size = last - first + 1
    for _ in range(64):
        free = size - len(used)
        if free <= 0:
            break
        candidate = first + random.randrange(size)
        if candidate in used or candidate == gateway:
            # walk to the next free address from the random start
            for step in range(size):
                c = first + (candidate - first + step) % size
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

"""A subnet's ``allocation_pools``: read from a request and checked as Neutron checks them.

As Neutron (``neutron/db/ipam_backend_mixin.py``, ``neutron_lib`` exceptions):

* absent (or null) at create: the subnet's host addresses without its gateway, so
  one pool, or two when the gateway sits inside the range; ``[]``: no pool at all
  (only addresses asked for by name are handed out);
* each pool is ``{"start", "end"}``, two IPv4 addresses with start <= end (else
  400 "The allocation pool ... is not valid."), within the subnet's host addresses
  (else 400 "... spans beyond the subnet cidr ...");
* no two pools overlap (409 "Found overlapping allocation pools: ..."), and none
  holds the gateway (409 "Gateway ip ... conflicts with allocation pool ...");
  Neutron answers both with 409, and so does Haven.

Every message names the field (and the pool's index where one pool is at fault).
A pool is shown as Neutron shows a range: ``first-last``.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Sequence
from typing import Any

from core.common.faults import BadRequest, Conflict

FIELD = "allocation_pools"
Pool = tuple[int, int]  # first and last address, as integers, first <= last


def text(pool: Pool) -> str:
    return f"{ipaddress.IPv4Address(pool[0])}-{ipaddress.IPv4Address(pool[1])}"


def host_range(cidr: ipaddress.IPv4Network) -> Pool:
    """The subnet's host addresses (neither its network nor its broadcast address)."""
    return int(cidr.network_address) + 1, int(cidr.broadcast_address) - 1


def default(cidr: ipaddress.IPv4Network, gateway: str | None) -> list[Pool]:
    """Neutron's pools for a subnet created without any: its hosts minus the gateway."""
    first, last = host_range(cidr)
    if gateway is None:
        return [(first, last)]
    gw = int(ipaddress.IPv4Address(gateway))
    return [p for p in ((first, gw - 1), (gw + 1, last)) if p[0] <= p[1]]


def _address(value: Any, where: str) -> int:
    if not isinstance(value, str):
        raise BadRequest(f"Invalid input for field '{where}': {value!r} is not an IP "
                         "address.")
    try:
        return int(ipaddress.IPv4Address(value))
    except ValueError:
        raise BadRequest(f"Invalid input for field '{where}': {value!r} is not an IPv4 "
                         "address.") from None


def parse(value: Any, cidr: ipaddress.IPv4Network) -> list[Pool]:
    """The pools of a request's ``allocation_pools`` (a list), checked against ``cidr``
    and each other, sorted by address."""
    if not isinstance(value, list):
        raise BadRequest(f"Invalid input for field '{FIELD}': a list of {{start, end}} "
                         "objects.")
    first_host, last_host = host_range(cidr)
    pools: list[Pool] = []
    for i, entry in enumerate(value):
        where = f"{FIELD}[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"start", "end"}:
            raise BadRequest(f"Invalid input for field '{where}': an object with 'start' "
                             "and 'end' only.")
        start, end = _address(entry["start"], where), _address(entry["end"], where)
        pool = (start, end)
        if end < start:
            raise BadRequest(f"Invalid input for field '{where}': The allocation pool "
                             f"{entry['start']}-{entry['end']} is not valid.")
        if start < first_host or end > last_host:
            raise BadRequest(f"Invalid input for field '{where}': The allocation pool "
                             f"{text(pool)} spans beyond the subnet cidr {cidr}.")
        pools.append(pool)
    pools.sort()
    for left, right in itertools.pairwise(pools):
        if right[0] <= left[1]:
            raise Conflict(f"Invalid input for field '{FIELD}': Found overlapping "
                           f"allocation pools: {text(left)} {text(right)} for subnet "
                           f"{cidr}.")
    return pools


def check_gateway(gateway: str | None, pools: Sequence[Pool], field: str = FIELD) -> None:
    """409 when ``gateway`` is inside one of ``pools`` (``field`` names what changed)."""
    if gateway is None:
        return
    gw = int(ipaddress.IPv4Address(gateway))
    for pool in pools:
        if pool[0] <= gw <= pool[1]:
            raise Conflict(f"Invalid input for field '{field}': Gateway ip {gateway} "
                           f"conflicts with allocation pool {text(pool)}.")

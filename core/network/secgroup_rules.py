"""What a security group rule means, checked as Neutron checks it (no database here).

A rule body is turned into a :class:`RuleSpec` or refused with a 400 naming the
field, with Neutron's messages (``neutron/db/securitygroups_db.py``,
``neutron/extensions/securitygroup.py``):

* ``direction`` ``ingress``/``egress`` (required); ``ethertype`` ``IPv4``/``IPv6``
  (default IPv4, any case);
* ``protocol``: a name (``tcp``, ``udp``, ``icmp``, ``icmpv6``/``ipv6-icmp``,
  ``sctp``, ... or ``any``, which is no protocol) or a number 0..255;
* ``port_range_min``/``port_range_max``: for TCP/UDP/SCTP/UDPLITE/DCCP a port range
  1..65535 with min <= max; for ICMP/ICMPv6 the type and code (0..255; a code needs a
  type); for any other protocol, or none, no ports at all;
* ``remote_ip_prefix`` (a CIDR or an address, of the rule's ethertype) or
  ``remote_group_id``, never both.

:func:`duplicate_key` is what two rules must share to be the same rule (Neutron's
409 ``SecurityGroupRuleExists``): a protocol given by name or number, and an
any-address prefix or none, are the same.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from core.common.faults import BadRequest

# IANA numbers of the protocol names Neutron accepts (neutron_lib.constants.IP_PROTOCOL_MAP)
PROTOCOLS: dict[str, int] = {
    "ah": 51, "dccp": 33, "egp": 8, "esp": 50, "gre": 47, "hopopt": 0, "icmp": 1, "igmp": 2,
    "ipip": 4, "ipv6-encap": 41, "ipv6-frag": 44, "ipv6-icmp": 58, "icmpv6": 58,
    "ipv6-nonxt": 59, "ipv6-opts": 60, "ipv6-route": 43, "ospf": 89, "pgm": 113, "rsvp": 46,
    "sctp": 132, "tcp": 6, "udp": 17, "udplite": 136, "vrrp": 112,
}
PORT_PROTOCOLS = frozenset({6, 17, 33, 132, 136})
ICMP_PROTOCOLS = frozenset({1, 58})
IPV6_ONLY = frozenset({41, 43, 44, 58, 59, 60})
FIELDS = frozenset({"security_group_id", "direction", "ethertype", "protocol",
                    "port_range_min", "port_range_max", "remote_ip_prefix", "remote_group_id",
                    "description", "tenant_id", "project_id", "remote_address_group_id"})


@dataclass(frozen=True)
class RuleSpec:
    """A checked rule: ``protocol`` as the client named it (None: any), ``number`` its
    IANA number (None: any); ``remote_ip_prefix`` as given."""

    direction: str
    ethertype: str
    protocol: str | None
    number: int | None
    port_range_min: int | None
    port_range_max: int | None
    remote_ip_prefix: str | None
    remote_group_id: str | None


def protocol_number(protocol: str | None) -> int | None:
    """The IANA number of a stored protocol (a name or a number), None for any."""
    if protocol is None:
        return None
    if protocol.isdigit():
        return int(protocol)
    return PROTOCOLS[protocol]


def _protocol(value: Any) -> tuple[str | None, int | None]:
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest("Invalid input for field 'protocol': a name or a number.")
    text = str(value).strip().lower()
    if text in ("", "any"):
        return None, None
    if text.isdigit() and 0 <= int(text) <= 255:
        return str(int(text)), int(text)
    if text in PROTOCOLS:
        return text, PROTOCOLS[text]
    raise BadRequest(f"Security group rule protocol {value} not supported. Only protocol "
                     f"values {sorted([*PROTOCOLS, 'any'])} and integer representations "
                     "[0 to 255] are supported (field 'protocol').")


def _port(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest(f"Invalid input for {name}. Reason: '{value}' is not an integer.")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"Invalid input for {name}. Reason: '{value}' is not an "
                         "integer.") from None
    if not 0 <= number <= 65535:
        raise BadRequest(f"Invalid input for {name}. Reason: {value} is not in 0..65535.")
    return number


def _ports(number: int | None, name: str | None, low: int | None, high: int | None) -> None:
    if low is None and high is None:
        return
    if number is None:
        raise BadRequest("Must also specify protocol if port range is given "
                         "(fields 'port_range_min', 'port_range_max').")
    if number in ICMP_PROTOCOLS:
        for field_name, attr, value in (("type", "port_range_min", low),
                                        ("code", "port_range_max", high)):
            if value is not None and not 0 <= value <= 255:
                raise BadRequest(f"Invalid value for ICMP {field_name} ({attr}) {value}. "
                                 "It must be 0 to 255.")
        if low is None:
            raise BadRequest(f"ICMP code (port_range_max) {high} is provided but ICMP type "
                             "(port_range_min) is missing.")
        return
    if number not in PORT_PROTOCOLS:
        raise BadRequest(f"Invalid protocol {name} for port range (fields 'port_range_min', "
                         "'port_range_max'), only supported for TCP, UDP, UDPLITE, SCTP and "
                         "DCCP.")
    for attr, value in (("port_range_min", low), ("port_range_max", high)):
        if value == 0:
            raise BadRequest(f"Invalid value for port 0 (field '{attr}'): ports are 1 to "
                             "65535.")
    if low is None or high is None or low > high:
        raise BadRequest("For TCP/UDP protocols, port_range_min must be <= port_range_max "
                         f"(field 'port_range_min' {low}, 'port_range_max' {high}).")


def _prefix(value: Any, ethertype: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("Invalid input for field 'remote_ip_prefix': a CIDR.")
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise BadRequest(f"Invalid input for field 'remote_ip_prefix': '{value}' is not a "
                         "valid IP subnet.") from None
    if f"IPv{net.version}" != ethertype:
        raise BadRequest(f"Conflicting value ethertype {ethertype} for CIDR {value} "
                         "(fields 'ethertype', 'remote_ip_prefix').")
    text = value.strip()
    return text if "/" in text else f"{text}/{net.max_prefixlen}"


def parse_rule(body: dict[str, Any]) -> RuleSpec:
    """The rule ``body`` asks for, or a 400 naming what is wrong (nothing is stored)."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(unknown)}'")
    if body.get("remote_address_group_id") is not None:
        raise BadRequest("Invalid input for field 'remote_address_group_id': address groups "
                         "are not supported by Haven.")
    direction = body.get("direction")
    if direction not in ("ingress", "egress"):
        raise BadRequest(f"Invalid input for field 'direction': '{direction}' is not in "
                         "['ingress', 'egress'].")
    raw_ether = body.get("ethertype", "IPv4")
    ethertype = {"ipv4": "IPv4", "ipv6": "IPv6"}.get(str(raw_ether).lower()
                                                    if raw_ether is not None else "ipv4")
    if ethertype is None:
        raise BadRequest(f"Invalid input for field 'ethertype': '{raw_ether}' is not in "
                         "['IPv4', 'IPv6'].")
    name, number = _protocol(body.get("protocol"))
    if number in IPV6_ONLY and ethertype == "IPv4":
        raise BadRequest(f"Invalid ethertype {ethertype} for protocol {name} (fields "
                         "'ethertype', 'protocol').")
    low, high = _port(body, "port_range_min"), _port(body, "port_range_max")
    _ports(number, name, low, high)
    remote_group = body.get("remote_group_id")
    if remote_group is not None and not isinstance(remote_group, str):
        raise BadRequest("Invalid input for field 'remote_group_id': a security group id.")
    if remote_group is not None and body.get("remote_ip_prefix") is not None:
        raise BadRequest("Only remote_ip_prefix or remote_group_id may be provided.")
    prefix = _prefix(body.get("remote_ip_prefix"), ethertype)
    return RuleSpec(direction, ethertype, name, number, low, high, prefix, remote_group)


def any_prefix(prefix: str | None) -> str | None:
    """None for no prefix or an any-address one (0.0.0.0/0, ::/0): they match the same."""
    if prefix is None:
        return None
    net = ipaddress.ip_network(prefix, strict=False)
    return None if net.prefixlen == 0 else str(net)


def duplicate_key(direction: str, ethertype: str, protocol: str | None,
                  low: int | None, high: int | None, prefix: str | None,
                  remote_group: str | None) -> tuple[Any, ...]:
    """What makes two rules of one group the same rule."""
    return (direction, ethertype, protocol_number(protocol), low, high, any_prefix(prefix),
            remote_group)


def spec_key(spec: RuleSpec) -> tuple[Any, ...]:
    return duplicate_key(spec.direction, spec.ethertype, spec.protocol, spec.port_range_min,
                         spec.port_range_max, spec.remote_ip_prefix, spec.remote_group_id)


def default_rules(group_id: str, is_default: bool) -> list[RuleSpec]:
    """Neutron's rules of a new group: egress anywhere (IPv4, IPv6); a project's
    ``default`` group also lets in whatever its own members send."""
    rules = [RuleSpec("egress", e, None, None, None, None, None, None) for e in ("IPv4", "IPv6")]
    if is_default:
        rules += [RuleSpec("ingress", e, None, None, None, None, None, group_id)
                  for e in ("IPv4", "IPv6")]
    return rules

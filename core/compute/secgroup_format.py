"""Neutron's security groups in Nova's format (``GET /servers/{id}/os-security-groups``).

Nova's proxy API answers with groups the network service holds, converted as Nova
converts them (``nova/network/security_group_api.py``
``_convert_to_nova_security_group_format`` and the API's ``_format_security_group``):

* a group is ``{"id", "name", "description", "tenant_id", "rules"}``;
* only ingress rules are shown (Nova's groups never had egress rules);
* a rule is ``{"id", "parent_group_id", "ip_protocol", "from_port", "to_port",
  "group", "ip_range"}``; a rule without ports is ``1``-``65535`` for TCP and UDP,
  ``-1``/``-1`` for any other protocol; one naming a remote group shows that
  group's ``{"name", "tenant_id"}`` and an empty ``ip_range``, any other its CIDR
  (``0.0.0.0/0`` when it has none) and an empty ``group``;
* a rule whose remote group the caller cannot see (deleted meanwhile, or another
  project's) is left out, as Nova leaves it out;
* the groups are sorted by ``(tenant_id, name)``.

Pure functions of the network API's answers, so the rules above are read here and
nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ANY_V4 = "0.0.0.0/0"  # Nova's parse_cidr of an empty prefix


def remote_ids(groups: Iterable[Mapping[str, Any]]) -> set[str]:
    """The remote groups the ingress rules of ``groups`` name (to look up once)."""
    return {str(r["remote_group_id"]) for g in groups
            for r in g.get("security_group_rules", [])
            if r["direction"] == "ingress" and r.get("remote_group_id")}


def _ports(rule: Mapping[str, Any]) -> tuple[int | None, int | None]:
    protocol = rule.get("protocol")
    low, high = rule.get("port_range_min"), rule.get("port_range_max")
    if protocol and low is None and high is None:
        return (1, 65535) if str(protocol).upper() in ("TCP", "UDP") else (-1, -1)
    return low, high


def rule_view(rule: Mapping[str, Any], remotes: Mapping[str, Mapping[str, Any]]
              ) -> dict[str, Any] | None:
    """One Neutron rule as Nova shows it; None when its remote group is not in
    ``remotes`` (the caller cannot see it)."""
    from_port, to_port = _ports(rule)
    view: dict[str, Any] = {
        "id": rule["id"], "parent_group_id": rule["security_group_id"],
        "ip_protocol": rule.get("protocol"), "from_port": from_port, "to_port": to_port,
        "group": {}, "ip_range": {}}
    remote = rule.get("remote_group_id")
    if remote:
        source = remotes.get(str(remote))
        if source is None:
            return None
        view["group"] = {"name": source.get("name"), "tenant_id": source.get("tenant_id")}
    else:
        view["ip_range"] = {"cidr": rule.get("remote_ip_prefix") or ANY_V4}
    return view


def group_view(group: Mapping[str, Any], remotes: Mapping[str, Mapping[str, Any]]
               ) -> dict[str, Any]:
    """One Neutron group as Nova shows it (ingress rules only)."""
    rules = [rule_view(r, remotes) for r in group.get("security_group_rules", [])
             if r["direction"] == "ingress"]
    return {"id": group["id"], "name": group["name"], "description": group["description"],
            "tenant_id": group["tenant_id"], "rules": [r for r in rules if r is not None]}


def groups_view(groups: Iterable[Mapping[str, Any]],
                remotes: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``groups`` in Nova's format and order; ``remotes`` are the groups the caller
    can see by id (``groups`` themselves count as seen)."""
    groups = list(groups)
    known = {**remotes, **{str(g["id"]): g for g in groups}}
    return sorted((group_view(g, known) for g in groups),
                  key=lambda g: (g["tenant_id"], g["name"]))

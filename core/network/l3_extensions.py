"""The Neutron API extensions routers and floating IPs implement (``/v2.0/extensions``).

Clients look these up by alias before they use an attribute (``router:external``,
``external_gateway_info.enable_snat``); only what Haven honours is listed.
"""

from __future__ import annotations

from typing import Any

UPDATED = "2026-11-30T00:00:00Z"


def extension(alias: str, name: str, description: str) -> dict[str, Any]:
    return {"alias": alias, "name": name, "description": description, "updated": UPDATED,
            "links": []}


EXTENSIONS = [
    extension("external-net", "Neutron external network",
         "Adds external network attribute to network resource."),
    extension("router", "Neutron L3 Router",
         "Router abstraction for basic L3 forwarding between L2 Neutron networks and "
         "access to external networks via a NAT gateway."),
    extension("ext-gw-mode", "Neutron L3 Configurable external gateway mode",
         "Extension of the router abstraction for specifying whether SNAT should occur on "
         "the external gateway"),
    extension("l3-ext-gw-mode", "Neutron L3 Configurable external gateway mode",
         "Extension of the router abstraction for specifying whether SNAT should occur on "
         "the external gateway"),
]

"""Port binding (Neutron's ``binding`` extension): which hypervisor a port lives on.

``binding:host_id`` is set by an administrator (the compute service when it places
the guest) and is what a hypervisor's agent asks for to learn its own ports
(``GET /v2.0/ports?binding:host_id=HOST``); the agent plugs their taps
(``binding:vif_type`` ``tap``: the hypervisor makes the device, the agent puts it on
the network's bridge). As in Neutron, only administrators see the binding
attributes; ``binding:vnic_type`` stays visible to everyone.
"""

from __future__ import annotations

from typing import Any

HIDDEN = ("binding:host_id", "binding:vif_type", "binding:vif_details", "binding:profile")
HOST_FILTER = "binding:host_id"


def present(view: dict[str, Any], may_see: bool) -> dict[str, Any]:
    if not may_see:
        for key in HIDDEN:
            view.pop(key, None)
    return view

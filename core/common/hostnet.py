"""Names the compute and network sides of a hypervisor agree on.

The hypervisor (compute) creates a guest's tap device, the network agent plugs it
into the network's bridge and filters it; the network agent makes one service
namespace per network on each hypervisor that has a port on it (the DHCP server's
address and the metadata address live there), the compute agent serves the guests'
metadata inside it. Neither side imports the other's modules: both read these names.
"""

from __future__ import annotations

METADATA_ADDRESS = "169.254.169.254"
"""Where guests ask for their metadata (Nova's and EC2's address)."""

IFNAMSIZ = 15  # the kernel's limit on an interface name's length (without its NUL)


def tap_name(port_id: str) -> str:
    """The tap device of a port, as Nova and Neutron name it (``tap`` + 11 characters
    of the port's id: 14 characters, within the kernel's 15)."""
    return "tap" + port_id[:11]


def service_namespace(network_id: str) -> str:
    """The network namespace on a hypervisor that holds the network's DHCP server and
    metadata address (Neutron's ``qdhcp-<id>``)."""
    return f"hnet-{network_id}"

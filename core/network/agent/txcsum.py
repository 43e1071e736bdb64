"""Reading and turning off a device's transmit checksum offload (``ethtool -K DEV tx``).

Why the hybrid plug needs it: a guest's TCP and UDP packets leave its NIC (a veth, or
QEMU's tap with virtio offloads) with the checksum left for the hardware to fill in
(``CHECKSUM_PARTIAL``). The kernel fills it in only when the packet is sent on a
device that cannot; a veth can, so on its way through ``qbr`` and ``qvb`` to ``qvo``
it stays unfinished. Open vSwitch's userspace datapath (``netdev``) then reads the
frame off ``qvo`` through a packet socket and sends it on as it is: every TCP segment
arrives with a wrong checksum and is dropped (ping works, TCP does not). With ``tx``
off on ``qvb`` (the device the bridge sends into) the kernel completes the checksum,
and segments large sends, before the switch sees the frame.

No ethtool binary is needed: this is the ``SIOCETHTOOL`` ioctl with the legacy
``ETHTOOL_GTXCSUM``/``ETHTOOL_STXCSUM`` commands, which the kernel maps onto the
device's checksum features. It acts in the network namespace of the process; the
agent runs it as ``python -m core.network.agent.txcsum off DEV`` (inside
``ip netns exec NS`` when the hypervisor is a namespace).
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
import sys

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17
IFNAMSIZ = 16


def _ethtool(device: str, command: int, data: int = 0) -> int:
    if not device or len(device) >= IFNAMSIZ:
        raise ValueError(f"not a device name: {device!r}")
    value = ctypes.create_string_buffer(struct.pack("II", command, data), 8)
    ifreq = struct.pack(f"{IFNAMSIZ}sP", device.encode(), ctypes.addressof(value))
    ifreq += b"\0" * (40 - len(ifreq))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    return int(struct.unpack("II", value.raw)[1])


def tx_checksum(device: str) -> bool:
    """Whether ``device`` leaves transmit checksums to offload (``tx`` on)."""
    return bool(_ethtool(device, ETHTOOL_GTXCSUM))


def set_tx_checksum(device: str, on: bool) -> None:
    _ethtool(device, ETHTOOL_STXCSUM, int(on))


def main(argv: list[str]) -> int:
    """``off DEV``: turn ``tx`` off and check it is off; ``show DEV``: print on/off."""
    if len(argv) != 2 or argv[0] not in ("off", "show"):
        print("usage: python -m core.network.agent.txcsum off|show DEV", file=sys.stderr)
        return 2
    action, device = argv
    try:
        if action == "off":
            set_tx_checksum(device, False)
            if tx_checksum(device):
                print(f"{device}: tx checksum offload is still on", file=sys.stderr)
                return 1
        else:
            print("on" if tx_checksum(device) else "off")
    except OSError as exc:
        print(f"{device}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

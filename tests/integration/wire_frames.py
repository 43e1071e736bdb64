"""What crosses a wire: the source MAC and 802.1Q VLAN id of every Ethernet frame on
one device, read with a raw packet socket (no tcpdump on the development machine).

Run in the namespace that holds the device, by :class:`WireCapture`::

    ip netns exec NS python -m tests.integration.wire_frames DEVICE

(``--send DEVICE HEX...`` sends those frames instead: :func:`send_frames`, a guest
putting on its wire what its kernel could not make, like an 802.1Q frame).

It prints ``ready`` once the socket is bound, then counts frames until SIGTERM, then
prints the counts as JSON (``{"<source MAC> <VLAN id or untagged>": n}``). The
kernel takes a received frame's tag out of the frame into the packet's metadata (even
without the 802.1Q module), so the tag is read from ``PACKET_AUXDATA`` and, for a
frame whose tag is still in its bytes (one sent from this host), from the frame.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import FrameType, TracebackType

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 1 << 4
AUXDATA = struct.Struct("IIIHHHH")  # struct tpacket_auxdata
ROOT = Path(__file__).resolve().parents[2]


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def frame_key(data: bytes, ancdata: list[tuple[int, int, bytes]]) -> str:
    """``<source MAC> <VLAN id>`` (or ``untagged``) of one received frame."""
    vid: int | None = None
    for level, kind, value in ancdata:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(value) >= AUXDATA.size:
            status, *_, tci, _tpid = AUXDATA.unpack(value[:AUXDATA.size])
            if status & TP_STATUS_VLAN_VALID:
                vid = tci & 0x0FFF
    if vid is None and len(data) >= 16 and data[12:14] in (b"\x81\x00", b"\x88\xa8"):
        vid = int.from_bytes(data[14:16], "big") & 0x0FFF
    return f"{_mac(data[6:12])} {'untagged' if vid is None else vid}"


class Stopped(Exception):
    """SIGTERM: the capture is over."""


def capture(device: str) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    sock.bind((device, ETH_P_ALL))
    counts: Counter[str] = Counter()

    def finish(_signum: int, _frame: FrameType | None) -> None:
        raise Stopped  # out of the blocked recvmsg

    signal.signal(signal.SIGTERM, finish)
    print("ready", flush=True)
    try:
        while True:
            data, ancdata, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(64))
            counts[frame_key(data, ancdata)] += 1
    except Stopped:  # what the socket holds already is counted too
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                data, ancdata, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(64))
                counts[frame_key(data, ancdata)] += 1
    print(json.dumps(dict(counts)), flush=True)


def send(device: str, frames: list[str]) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((device, 0))
        for frame in frames:
            sock.send(bytes.fromhex(frame))


def ethernet(src: str, vid: int | None, dst: str = "ff:ff:ff:ff:ff:ff") -> bytes:
    """A minimal frame (the local experimental EtherType 0x88b5), tagged with ``vid``."""
    tag = b"" if vid is None else b"\x81\x00" + vid.to_bytes(2, "big")
    head = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", ""))
    return (head + tag + b"\x88\xb5").ljust(64, b"\x00")


def send_frames(netns: str, device: str, frames: list[bytes]) -> None:
    """Send raw ``frames`` out of ``device`` in ``netns``."""
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m",
                    "tests.integration.wire_frames", "--send", device,
                    *(f.hex() for f in frames)], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


class WireCapture:
    """Counts the frames on ``device`` in namespace ``netns`` while the block runs;
    ``frames`` afterwards: ``{(source MAC, VLAN id or None): count}``."""

    def __init__(self, netns: str, device: str) -> None:
        self.argv = ["ip", "netns", "exec", netns, sys.executable, "-m",
                     "tests.integration.wire_frames", device]
        self.frames: dict[tuple[str, int | None], int] = {}
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> WireCapture:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise AssertionError(f"the capture did not start: {line!r}")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate()
        if kind is not None:
            return
        counts = json.loads(out.strip().splitlines()[-1])
        for key, count in counts.items():
            mac, vid = key.split(" ")
            self.frames[(mac, None if vid == "untagged" else int(vid))] = count


if __name__ == "__main__":
    if sys.argv[1] == "--send":
        send(sys.argv[2], sys.argv[3:])
    else:
        capture(sys.argv[1])

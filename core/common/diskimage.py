"""Reading disk image headers in Python, before QEMU or qemu-img sees the file.

A disk image is a program for QEMU's block layer: a qcow2 with a backing file
or an external data file, a VMDK whose descriptor lists extents, or a VMDK
with a ``parentFileNameHint`` makes QEMU (and ``qemu-img info``) open a path
the image's author chose: another tenant's disk, the Fernet keys. And a file
that QEMU is left to probe is whatever format its first bytes say, so a
"raw" upload that is really a VMDK descriptor becomes one the moment anyone
probes it. So the image service and the compute agent both check the bytes
here, without running anything that could follow a reference:

- the content must be the declared format (no other format's signature in a
  "raw" image, the declared format's signature in any other);
- nothing in the image may name another file, in any format;
- VMDK only as a single-file ``monolithicSparse`` or ``streamOptimized``.

Only header regions are read (the first MiB, and the last 512 bytes where VHD
and DMG keep their footers), so a check costs the same for any image size.
Written after Glance's format_inspector and QEMU's own probes (block/*.c).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

#: Formats Haven accepts for images (what QEMU is told with -f / <driver type>).
CHECKED_FORMATS = ("raw", "qcow2", "vmdk")

SAFE_VMDK_TYPES = frozenset({"monolithicSparse", "streamOptimized"})
HEAD_BYTES = 1 << 20  # QEMU reads a VMDK text descriptor up to 1 MiB - 1
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
QCOW2_EXT_DATA_FILE = 0x44415441
QCOW2_EXT_END = 0


class UnsafeImage(ValueError):
    """The data is not an acceptable image of the declared format (a 400 at upload)."""


@dataclass(frozen=True)
class Sample:
    """The regions of a file that format signatures live in."""

    head: bytes
    tail: bytes
    size: int

    @classmethod
    def of(cls, path: Path) -> Sample:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 512))
            tail = handle.read(512)
        return cls(head, tail, size)

    def at(self, offset: int, length: int) -> bytes:
        return self.head[offset:offset + length]


def _vmdk_text(sample: Sample) -> bool:
    """A VMDK text descriptor, by QEMU's reading rather than its probe.

    QEMU's probe only knows descriptors that begin with comments and a
    ``version=`` line, but ``-f vmdk`` parses any text (up to the first NUL
    byte) that has a ``createType``: a leading blank line hides a descriptor
    from the probe and not from the parser. So any of the descriptor's key
    words in the text before the first NUL counts.
    """
    text = sample.head.split(b"\0", 1)[0]
    return bool(re.search(rb"createType|DescriptorFile|parentFileNameHint|"
                          rb"^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+[A-Z]+", text,
                          re.IGNORECASE | re.MULTILINE))


def detect(sample: Sample) -> set[str]:
    """Every non-raw format whose signature the data carries (empty: plain raw)."""
    found = set()
    magic = sample.at(0, 8)
    if magic.startswith(b"QFI\xfb"):
        found.add("qcow2")
    if magic.startswith(b"QED\0"):
        found.add("qed")
    if magic.startswith((b"KDMV", b"COWD")) or _vmdk_text(sample):
        found.add("vmdk")
    if magic == b"conectix" or sample.tail.startswith(b"conectix"):
        found.add("vhd")
    if magic == b"vhdxfile":
        found.add("vhdx")
    if sample.at(0x40, 4) == struct.pack("<I", 0xBEDA107F):
        found.add("vdi")
    if magic.startswith(b"LUKS\xba\xbe"):
        found.add("luks")
    if any(sample.at(off, 5) == b"CD001" for off in (0x8001, 0x8801, 0x9001)):
        found.add("iso")
    if sample.at(0, 16) in (b"WithoutFreeSpace", b"WithouFreSpacExt"):
        found.add("parallels")
    if sample.head.startswith(b"Bochs Virtual HD Image"):
        found.add("bochs")
    if sample.head.startswith(b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop"):
        found.add("cloop")
    if sample.tail.startswith(b"koly"):
        found.add("dmg")
    if sample.head.startswith(b"json:"):
        found.add("json")  # a QEMU pseudo-protocol: never a disk
    return found


def check(path: Path, declared: str) -> None:
    """Raise UnsafeImage unless ``path`` is a self-contained ``declared`` image."""
    if declared not in CHECKED_FORMATS:
        raise UnsafeImage(f"disk format {declared!r} is not accepted "
                          f"(only {', '.join(CHECKED_FORMATS)})")
    sample = Sample.of(path)
    found = detect(sample)
    if declared == "raw":
        if found:
            raise UnsafeImage(f"declared raw but the data is {', '.join(sorted(found))}")
        return
    if declared not in found:
        raise UnsafeImage(f"declared {declared} but the data is "
                          f"{', '.join(sorted(found)) or 'raw'}")
    if declared == "qcow2":
        _check_qcow2(sample)
    else:
        _check_vmdk(sample)


def _check_qcow2(sample: Sample) -> None:
    if len(sample.head) < 72:
        raise UnsafeImage("qcow2 header is truncated")
    version, backing_offset, backing_size = struct.unpack(">IQI", sample.at(4, 16))
    crypt_method = struct.unpack(">I", sample.at(32, 4))[0]
    if version not in (2, 3):
        raise UnsafeImage(f"qcow2 version {version} is not accepted")
    if backing_offset or backing_size:
        raise UnsafeImage("images with a backing file are not accepted")
    if crypt_method:
        raise UnsafeImage("encrypted qcow2 images are not accepted")
    header_length = 72
    if version == 3:
        if len(sample.head) < 104:
            raise UnsafeImage("qcow2 v3 header is truncated")
        incompatible = struct.unpack(">Q", sample.at(72, 8))[0]
        if incompatible & QCOW2_INCOMPAT_DATA_FILE:
            raise UnsafeImage("qcow2 images with an external data file are not accepted")
        header_length = struct.unpack(">I", sample.at(100, 4))[0]
    offset = header_length
    while True:  # header extensions: type, length, data padded to 8 bytes
        if offset + 8 > min(len(sample.head), 65536):
            raise UnsafeImage("qcow2 header extensions are truncated")
        kind, length = struct.unpack(">II", sample.at(offset, 8))
        if kind == QCOW2_EXT_END:
            return
        if kind == QCOW2_EXT_DATA_FILE:
            raise UnsafeImage("qcow2 images with an external data file are not accepted")
        offset += 8 + ((length + 7) & ~7)


def _check_vmdk(sample: Sample) -> None:
    """A binary sparse VMDK whose embedded descriptor names no other file."""
    if not sample.head.startswith(b"KDMV") or len(sample.head) < 512:
        raise UnsafeImage("only binary monolithicSparse/streamOptimized vmdk images are "
                          "accepted (text descriptors name other files)")
    _, version, _, capacity, _, desc_sector, desc_sectors = struct.unpack(
        "<4sIIQQQQ", sample.at(0, 44))
    if version not in (1, 2, 3):
        raise UnsafeImage(f"vmdk version {version} is not accepted")
    if capacity == 0:  # QEMU then opens the descriptor's extents instead
        raise UnsafeImage("vmdk with zero capacity (descriptor extents) is not accepted")
    if desc_sector != 1 or not 0 < desc_sectors <= 2047:
        raise UnsafeImage("vmdk descriptor is not at its usual place")
    raw = sample.at(512, desc_sectors * 512).split(b"\0", 1)[0]
    text = raw.decode("ascii", errors="replace")
    kinds = re.findall(r'^\s*createType\s*=\s*"([^"]*)"', text, re.MULTILINE)
    if len(kinds) != 1 or kinds[0] not in SAFE_VMDK_TYPES:
        raise UnsafeImage(f"vmdk subformat {', '.join(kinds) or 'unknown'} is not accepted "
                          f"(only {', '.join(sorted(SAFE_VMDK_TYPES))})")
    if re.search(r"parentFileNameHint", text, re.IGNORECASE):
        raise UnsafeImage("vmdk images with a parent (backing) file are not accepted")
    parent = re.findall(r"^\s*parentCID\s*=\s*(\S+)", text, re.MULTILINE)
    if any(p.lower() != "ffffffff" for p in parent):
        raise UnsafeImage("vmdk images with a parent (backing) file are not accepted")
    extents = re.findall(r'^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+(\S+)\s*(.*)$', text,
                         re.MULTILINE | re.IGNORECASE)
    if len(extents) != 1:
        raise UnsafeImage("vmdk images must have exactly one extent (in the file itself)")
    kind, rest = extents[0]
    name = rest.split('"')[1] if rest.count('"') >= 2 else ""
    if kind.upper() != "SPARSE" or "/" in name or "\\" in name or ":" in name:
        raise UnsafeImage("vmdk images with extents naming other files are not accepted")

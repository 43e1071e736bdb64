"""Checking uploaded image data with ``qemu-img info`` before anyone boots it.

A disk image is a program for QEMU's block layer: a qcow2 "image" with a
backing file or an external data file pointing at ``/etc/shadow`` or another
tenant's disk would read host files when booted. So every upload is inspected,
the detected format must be the declared one (a "raw" upload that is really
qcow2 is refused for the same reason), and references to other files are
refused outright (Glance's format inspector does the same).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

SAFE_VMDK_TYPES = {"monolithicSparse", "streamOptimized"}


class ImageFormatError(ValueError):
    """The data is not an acceptable image of the declared format (a 400)."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int


def inspect(path: Path, declared: str) -> ImageInfo:
    """Check ``path`` holds a self-contained image in format ``declared``."""
    try:
        out = subprocess.run(
            ["qemu-img", "info", "--output=json", "-f", declared, str(path)],
            capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageFormatError(f"cannot inspect image data: {exc}") from exc
    if out.returncode != 0:
        raise ImageFormatError(f"data is not a valid {declared} image: "
                               f"{out.stderr.strip()[:300]}")
    info = json.loads(out.stdout)
    detected = _detect(path)
    if declared == "raw" and detected not in ("raw", None):
        raise ImageFormatError(f"declared raw but the data is {detected}")
    if declared != "raw" and detected != declared:
        raise ImageFormatError(f"declared {declared} but the data is {detected or 'unknown'}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise ImageFormatError("images with a backing file are not accepted")
    specific = info.get("format-specific", {}).get("data", {})
    if specific.get("data-file"):
        raise ImageFormatError("qcow2 images with an external data file are not accepted")
    if declared == "vmdk":
        create_type = specific.get("create-type")
        if create_type not in SAFE_VMDK_TYPES:
            raise ImageFormatError(f"vmdk subformat {create_type} is not accepted "
                                   f"(only {', '.join(sorted(SAFE_VMDK_TYPES))})")
        if any(extent.get("filename") != str(path) for extent in specific.get("extents", [])):
            raise ImageFormatError("vmdk images with external extents are not accepted")
    return ImageInfo(declared, int(info.get("virtual-size", 0)))


def _detect(path: Path) -> str | None:
    """The format qemu-img probes, without trusting the declaration."""
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        return None
    return str(json.loads(out.stdout).get("format"))

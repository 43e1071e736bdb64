"""Checking uploaded image data before anyone boots it.

Two steps, in this order. First the bytes are read in Python
(core.common.diskimage): the content must be the declared format, a "raw"
upload must carry no other format's signature, and nothing in the image may
name another file. Only then is ``qemu-img info`` run, always with ``-f``
(never probing, which is how a raw upload becomes a VMDK descriptor), to
validate the structure and read the virtual size; its answer is checked
again for backing files and extents as a second line.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from core.common.diskimage import SAFE_VMDK_TYPES, UnsafeImage, check


class ImageFormatError(ValueError):
    """The data is not an acceptable image of the declared format (a 400)."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int


def inspect(path: Path, declared: str) -> ImageInfo:
    """Check ``path`` holds a self-contained image in format ``declared``."""
    try:
        check(path, declared)
    except UnsafeImage as exc:
        raise ImageFormatError(str(exc)) from None
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
    if info.get("format") != declared:
        raise ImageFormatError(f"declared {declared} but qemu-img read {info.get('format')}")
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

"""The tiny guest image boots on its own in QEMU and keeps its token on its own disk.

Haven's compute tests rely on three properties of images/tiny: it boots as a plain disk (no
-kernel/-initrd, like a Glance image), it prints a marker on the serial console, and a token it
writes to the last MiB of its disk survives a reboot (so "the same disk came back" is testable).
This test checks all three with plain QEMU (TCG, no libvirt), plus a graceful ACPI power-off.

The image is built into .haven-bench/tiny (gitignored) and reused while its inputs are
unchanged; each boot runs on a throwaway qcow2 overlay so the cached base stays clean.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.integration.tinyvm import CACHE_DIR, Guest, build
from tests.integration.tinyvm import overlay as make_overlay

TOKEN_RE = re.compile(r"^HAVEN-TOKEN ([0-9a-f]{32}) (new|from-disk)\r?$", re.MULTILINE)
MARKER_RE = re.compile(r"^HAVEN-TINY-BOOTED\r?$", re.MULTILINE)
NO_NIC_RE = re.compile(r"^HAVEN-TINY-NET none\r?$", re.MULTILINE)
READY_RE = re.compile(r"^HAVEN-TINY-READY\r?$", re.MULTILINE)

REQUIRED_TOOLS = ("qemu-system-x86_64", "qemu-img", "apt-get", "mkfs.fat", "mcopy", "syslinux")
pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in REQUIRED_TOOLS),
    reason=f"needs {', '.join(REQUIRED_TOOLS)}",
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_image() -> Path:
    build(CACHE_DIR)
    return CACHE_DIR / "tiny.qcow2"


@pytest.fixture
def overlay(tiny_image: Path, tmp_path: Path) -> Path:
    """A copy-on-write disk over the cached image, like a Haven instance's root disk."""
    return make_overlay(tiny_image, tmp_path / "overlay.qcow2")


def test_rebuild_with_unchanged_inputs_is_a_no_op(tiny_image: Path) -> None:
    before = tiny_image.stat().st_mtime_ns
    result = build(CACHE_DIR)
    assert "up to date" in result.stderr
    assert tiny_image.stat().st_mtime_ns == before
    manifest = json.loads((CACHE_DIR / "tiny.json").read_text())
    assert manifest["token_offset_bytes"] == manifest["virtual_size_bytes"] - 1024 * 1024


def test_boots_as_a_plain_disk_and_keeps_its_token_across_boots(
    tiny_image: Path, overlay: Path, tmp_path: Path
) -> None:
    base_digest = sha256(tiny_image)

    with Guest(overlay, tmp_path, "boot1") as first:
        first.wait_for(MARKER_RE)
        marker_after = time.monotonic() - first.started
        token_line = first.wait_for(TOKEN_RE)
        token, origin = token_line.groups()
        assert origin == "new"
    # Leaving the block killed QEMU (SIGKILL): the token was synced before it was printed.

    with Guest(overlay, tmp_path, "boot2") as second:
        second.wait_for(MARKER_RE)
        again = second.wait_for(TOKEN_RE)
        assert again.groups() == (token, "from-disk")
        # No NIC and no config drive: the cloud steps find nothing and the boot still ends.
        second.wait_for(READY_RE)
        assert NO_NIC_RE.search(second.console())
        assert "HAVEN-TINY-METADATA none" in second.console()
        # A graceful stop: the guest's acpid powers off on the ACPI power button.
        shutdown_seconds = second.powerdown()
        assert "HAVEN-POWEROFF acpi" in second.console()

    assert sha256(tiny_image) == base_digest, "the base image must stay clean"
    print(f"marker {marker_after:.1f} s after QEMU start; ACPI power-off {shutdown_seconds:.2f} s")

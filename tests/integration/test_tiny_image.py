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
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "images" / "tiny" / "build.py"
CACHE_DIR = REPO / ".haven-bench" / "tiny"
BOOT_TIMEOUT = 90.0
TOKEN_RE = re.compile(r"^HAVEN-TOKEN ([0-9a-f]{32}) (new|from-disk)\r?$", re.MULTILINE)
MARKER_RE = re.compile(r"^HAVEN-TINY-BOOTED\r?$", re.MULTILINE)

REQUIRED_TOOLS = ("qemu-system-x86_64", "qemu-img", "apt-get", "mkfs.fat", "mcopy", "syslinux")
pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in REQUIRED_TOOLS),
    reason=f"needs {', '.join(REQUIRED_TOOLS)}",
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(out: Path) -> subprocess.CompletedProcess[str]:
    """Run the build script as users do (a separate stdlib-only process)."""
    return subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )


@pytest.fixture(scope="module")
def tiny_image() -> Path:
    build(CACHE_DIR)
    return CACHE_DIR / "tiny.qcow2"


class Guest:
    """One QEMU boot of a disk, watched through its serial log and driven through QMP."""

    def __init__(self, disk: Path, workdir: Path, name: str) -> None:
        self.serial = workdir / f"{name}-serial.log"
        self.stderr = workdir / f"{name}-qemu.err"
        # A short directory: unix socket paths are limited to 108 bytes.
        self._sockdir = tempfile.TemporaryDirectory(prefix="tiny-qmp-")
        self.qmp_path = Path(self._sockdir.name) / "qmp.sock"
        self.cmd = [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic",
            "-monitor", "none", "-nic", "none",
            "-serial", f"file:{self.serial}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-drive", f"file={disk},if=virtio",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def __enter__(self) -> Guest:
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        self.started = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()  # a power cut: the token must already be on disk
                self.proc.wait(timeout=30)
        finally:
            self._sockdir.cleanup()

    def console(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: re.Pattern[str], timeout: float = BOOT_TIMEOUT) -> re.Match[str]:
        """Poll the serial log; fail with the console so far if the line never comes."""
        assert self.proc is not None
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.console())
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        errors = self.stderr.read_text(errors="replace")
        pytest.fail(
            f"no {pattern.pattern!r} within {timeout:.0f} s (QEMU exit {self.proc.poll()})\n"
            f"--- console ---\n{self.console()}\n--- qemu stderr ---\n{errors}"
        )

    def powerdown(self, timeout: float = 30.0) -> float:
        """Press the ACPI power button (what libvirt's shutdown does); seconds until QEMU ends."""
        assert self.proc is not None
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.qmp_path))
            stream = sock.makefile("rw")
            json.loads(stream.readline())  # greeting
            for command in ("qmp_capabilities", "system_powerdown"):
                stream.write(json.dumps({"execute": command}) + "\n")
                stream.flush()
            pressed = time.monotonic()
        self.proc.wait(timeout=timeout)
        return time.monotonic() - pressed


@pytest.fixture
def overlay(tiny_image: Path, tmp_path: Path) -> Path:
    """A copy-on-write disk over the cached image, like a Haven instance's root disk."""
    path = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(tiny_image), path],
        check=True,
    )
    return path


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
        # A graceful stop: the guest's acpid powers off on the ACPI power button.
        shutdown_seconds = second.powerdown()
        assert "HAVEN-POWEROFF acpi" in second.console()

    assert sha256(tiny_image) == base_digest, "the base image must stay clean"
    print(f"marker {marker_after:.1f} s after QEMU start; ACPI power-off {shutdown_seconds:.2f} s")

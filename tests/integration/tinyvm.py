"""Plain-QEMU boots of images/tiny for its tests: build the image, boot a disk, read the console.

Shared by test_tiny_image.py (boot, token, power button) and test_tiny_guest_cloud.py (DHCP,
instance data, SSH, user data). No libvirt: QEMU under TCG, the serial console in a file,
QMP on a unix socket.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "images" / "tiny" / "build.py"
CACHE_DIR = REPO / ".haven-bench" / "tiny"
BOOT_TIMEOUT = 90.0


def build(out: Path) -> subprocess.CompletedProcess[str]:
    """Run the build script as users do (a separate stdlib-only process)."""
    return subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )


def overlay(base: Path, path: Path) -> Path:
    """A copy-on-write disk over the cached image, like a Haven instance's root disk."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(path)],
        check=True,
    )
    return path


class Guest:
    """One QEMU boot of a disk, watched through its serial log and driven through QMP.

    ``devices`` are further QEMU arguments (NICs, a CD-ROM); without them the guest has no NIC.
    """

    def __init__(
        self, disk: Path, workdir: Path, name: str, devices: Sequence[str] = ("-nic", "none")
    ) -> None:
        self.serial = workdir / f"{name}-serial.log"
        self.stderr = workdir / f"{name}-qemu.err"
        # A short directory: unix socket paths are limited to 108 bytes.
        self._sockdir = tempfile.TemporaryDirectory(prefix="tiny-qmp-")
        self.qmp_path = Path(self._sockdir.name) / "qmp.sock"
        self.cmd = [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic",
            "-monitor", "none",
            "-serial", f"file:{self.serial}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-drive", f"file={disk},if=virtio",
            *devices,
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

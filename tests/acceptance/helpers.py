"""A real ``haven all-in-one`` process and the stock ``openstack`` CLI, for acceptance tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from tests.conftest import free_port

BIN = Path(sys.executable).parent


REPO = Path(__file__).resolve().parents[2]
TINY_CACHE = REPO / ".haven-bench" / "tiny"  # built once, shared with other tests


class AllInOne:
    """A running ``haven all-in-one`` with its output collected.

    Every service listens on a free loopback port, so this runs beside a
    developer's own ``make run``; its domains carry its own cloud id, so the
    two never touch each other's guests on the shared libvirtd.
    """

    def __init__(self, state: Path, clouds: Path, port: int, compute: bool = False,
                 settings: Sequence[str] = ()) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OS_", "HAVEN_"))}
        self.ports = {"identity": port, "compute": free_port(), "image": free_port(),
                      "network": free_port()}
        cmd = [str(BIN / "haven"), "all-in-one", "--state-dir", str(state), "--clouds-yaml",
               str(clouds), "--set", f"compute.demo_image_dir={TINY_CACHE}",
               "--set", "compute.shutdown_timeout=10",
               # no veth or address on the machine's own network (test_allinone_net.py
               # runs the all-in-one's networking in a namespace of its own)
               "--set", "network.allinone_networking=false"]
        for service, p in self.ports.items():
            cmd += ["--set", f"{service}.listen=127.0.0.1:{p}"]
        for setting in settings:
            cmd += ["--set", setting]
        if not compute:
            cmd.append("--no-compute")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(180):
            self.proc.kill()
            raise AssertionError("all-in-one did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "Ctrl-C stops" in line:
                self.ready.set()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


def openstack(clouds: Path, *args: str, user: tuple[str, str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["OS_CLIENT_CONFIG_FILE"] = str(clouds)
    cmd = [str(BIN / "openstack"), "--os-cloud", "haven"]
    if user:
        cmd += ["--os-username", user[0], "--os-password", user[1],
                "--os-project-name", user[2]]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env,
                          timeout=120)

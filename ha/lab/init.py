"""A lab node's PID 1: private mounts, host name, then reap orphans forever.

Run as ``python init.py SPEC.json`` by ``unshare --mount --uts --ipc --pid --fork
--mount-proc`` inside the node's network namespace. SPEC holds the host name, the
mounts (see ``config.init_mounts``) and a ``ready`` file on the shared lab disk
where init writes "ok" (or the error) once the node is set up.

Why a real init: daemons started with ``setsid -f`` are orphaned into the node's
PID namespace and must be reaped, and the namespace's PID 1 must outlive a stray
SIGTERM so only the power switch (SIGKILL from the host) ends a node. It is
standard-library only and imports nothing from Haven, to stay small (~10 MB).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def mount_argv(entry: dict[str, str]) -> list[str]:
    """The mount(8) command for one entry of the spec."""
    kind, target, options = entry["kind"], entry["target"], entry.get("options", "")
    if kind == "tmpfs":
        return ["mount", "-t", "tmpfs", "-o", options or "mode=0755", "tmpfs", target]
    if kind == "bind":
        return ["mount", "--bind", entry["source"], target]
    if kind == "overlay":
        return ["mount", "-t", "overlay", "-o", options, "overlay", target]
    raise ValueError(f"unknown mount kind {kind!r}")


def set_up(spec: dict[str, Any]) -> None:
    # unshare already made the tree private; say it again so no mount of ours can
    # ever propagate back to the host, whatever unshare's defaults become.
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    for entry in spec["mounts"]:
        if entry.get("mkdir"):
            os.makedirs(entry["target"], exist_ok=True)
        result = subprocess.run(mount_argv(entry), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(mount_argv(entry))}: {result.stderr.strip()}")
    for directory, mode in spec.get("dirs", []):
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, int(mode, 8))
    socket.sethostname(spec["hostname"])


def reap_forever() -> None:
    """Wait for children (every orphan of the namespace is ours) without a race:
    SIGCHLD stays blocked and is taken synchronously."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    while True:
        try:
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
        except ChildProcessError:
            pass
        signal.sigwaitinfo({signal.SIGCHLD})


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    os.chdir("/")  # hold no host directory busy; nsenter -w starts commands here
    ready = Path(spec["ready"])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    try:
        set_up(spec)
    except Exception as exc:  # report any failure to the host, which is waiting on it
        ready.write_text(f"error: {exc}\n")
        return 1
    # Nothing of the host's stdio is needed any more; keep no terminal or pipe alive.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    ready.write_text("ok\n")
    reap_forever()
    return 0  # pragma: no cover - reap_forever never returns


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Running the lab's external commands, and waiting on conditions with a deadline.

The lab drives ip(8), unshare(1), nsenter(1) and the cluster tools. Every call has a
timeout, so a wedged (say, frozen) node can never hang ``haven lab`` forever, and a
failure carries the command's own stderr, which is what an operator needs to read.
Waits are on facts (a socket answers, a node is online), never fixed sleeps.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")

# A small, predictable environment for everything the lab runs: the host's
# variables (a venv on PATH, PYTHONPATH, locale quirks) must not leak into nodes.
CLEAN_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}


class LabError(Exception):
    """The lab could not do what was asked (a command failed or a wait timed out)."""


def run(argv: Sequence[str], *, timeout: float = 30.0, check: bool = True,
        input_text: str | None = None, env: Mapping[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion and return its result.

    With ``check`` a non-zero exit raises :class:`LabError` whose message is the
    command and the last line of its stderr: one line an operator can act on.
    """
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                input=input_text, env=dict(env or CLEAN_ENV),
                                stdin=None if input_text is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)}: no answer after {timeout:g} s") from exc
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]}: not installed") from exc
    if check and result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines()
                  or [f"exit {result.returncode}"])[-1]
        raise LabError(f"{' '.join(argv)}: {detail}")
    return result


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str,
               interval: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Raises :class:`LabError` naming ``what`` after ``timeout`` seconds, so every wait
    in the lab is bounded and says what it was waiting for.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)

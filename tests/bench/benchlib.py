"""What the lab benchmarks share: the corosync tokens they compare, the token a
running cluster really uses, the tiny guest image, and the statistics they print.

Kept free of the lab at import time (the lab is imported only where a node is
asked), so the pure parts are unit-tested without one (tests/unit/test_benchlib.py).

Why the token is everywhere: a lost node is declared gone after about ``token`` +
``consensus`` (1.2 x token), and only then fenced; the token is most of a
failover's floor. A figure without its token cannot be compared with another, and
a figure only at a tuned token says nothing of what an operator gets by default.
So every bench runs at the product's default (``ha.bootstrap.corosync``) and at a
tuned token, side by side, and records the token the cluster *reported* running
(``corosync-cmapctl``), not only the one it was asked for.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ha.bootstrap.corosync import DEFAULT_TOKEN_MS

if TYPE_CHECKING:
    from ha.lab.state import NodeState

ROOT = Path(__file__).resolve().parents[2]
TUNED_TOKEN_MS = 1500
"""The tuned token compared with the default: half of it. Shorter still risks a node
declared lost on a scheduling hiccup of this shared 2-core machine (a needless fence,
which would spoil a run rather than speed it)."""
MIN_TOKEN_MS = 500  # what `haven cluster corosync-conf` accepts
DEFAULT_TOKENS = f"{DEFAULT_TOKEN_MS},{TUNED_TOKEN_MS}"
TINY_DIR = ROOT / ".haven-bench" / "tiny"
CMAP_TOKEN = re.compile(r"^runtime\.config\.totem\.token \(u\d+\) = (\d+)\s*$",
                        re.MULTILINE)


class BadArgument(argparse.ArgumentTypeError, ValueError):
    """A flag's value argparse reports with this message."""


class BenchError(Exception):
    """The bench cannot produce a figure it could defend."""


def parse_tokens(text: str) -> list[int]:
    """``--tokens 3000,1500`` -> [3000, 1500]: each a whole number of ms, at least
    ``MIN_TOKEN_MS``, none twice, at least one."""
    tokens: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise BadArgument(f"--tokens: {part!r} is not a whole number of milliseconds")
        value = int(part)
        if value < MIN_TOKEN_MS:
            raise BadArgument(f"--tokens: {value} ms is under {MIN_TOKEN_MS} ms")
        if value in tokens:
            raise BadArgument(f"--tokens: {value} ms given twice")
        tokens.append(value)
    return tokens


def parse_sizes(text: str) -> list[int]:
    """``--sizes 5,10,20`` -> [5, 10, 20]; an empty string is no size."""
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if any(n < 1 for n in sizes):
        raise BadArgument(f"sizes must be positive: {text!r}")
    return sizes


def parse_cmap_token(output: str) -> int:
    """The token from ``corosync-cmapctl -g runtime.config.totem.token``; BenchError if
    the output does not say it (a figure is never recorded against a guessed token)."""
    match = CMAP_TOKEN.search(output)
    if match is None:
        raise BenchError(f"corosync-cmapctl did not report the token: {output.strip()!r}")
    return int(match.group(1))


def running_token(nd: NodeState) -> int:
    """The token a lab node's corosync is really running with."""
    from ha.lab import node

    out = node.exec_in(nd, ["corosync-cmapctl", "-g", "runtime.config.totem.token"],
                       check=False, timeout=20)
    return parse_cmap_token(out.stdout)


def check_token(asked: int, running: int) -> None:
    if asked != running:
        raise BenchError(f"asked for a {asked} ms corosync token, the cluster runs {running} ms")


def ensure_tiny(out: Path = TINY_DIR) -> Path:
    """Build the tiny guest (images/tiny/build.py; it skips work already done) and
    return its disk: a bench on a fresh clone needs no earlier test to have built it."""
    subprocess.run([sys.executable, str(ROOT / "images" / "tiny" / "build.py"), "--out",
                    str(out)], check=True, stdout=subprocess.DEVNULL, timeout=900)
    disk = out / "tiny.qcow2"
    if not disk.is_file():
        raise BenchError(f"images/tiny/build.py left no {disk}")
    return disk


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """p50, min and max rounded to 10 ms; all None for no values (a run that never
    finished is reported as missing, never as zero)."""
    if not values:
        return {"p50": None, "min": None, "max": None}
    return {"p50": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def seconds(value: float | None) -> str:
    """A figure for the human line: ``7.53 s``, or ``n/a`` when missing."""
    return "n/a" if value is None else f"{value:.2f} s"

"""Lab tests: real Corosync/Pacemaker clusters of namespace nodes on this machine.

Tests marked ``lab`` need root and the cluster packages, and skip without them.
Only one lab may run on a machine at a time: a lab left up (or half torn down)
fails the lab tests instead of being torn down under someone's feet.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lab: builds a real namespace cluster (root, corosync, pacemaker, pcs)")


def lab_unavailable() -> str | None:
    """Why this machine cannot run a lab, or None if it can."""
    if os.geteuid() != 0:
        return "the lab needs root"
    missing = [t for t in ("corosync", "pacemakerd", "pcs", "crm_mon", "stonith_admin",
                           "unshare", "nsenter", "ip")
               if shutil.which(t, path=os.defpath + ":/usr/sbin:/sbin") is None]
    return f"missing {', '.join(missing)}" if missing else None


@pytest.fixture(scope="session", autouse=True)
def shared_stack_lab_ends_with_the_session() -> Iterator[None]:
    """The stack lab the modules share (tests/lab/labtools.py) goes with the session."""
    yield
    from tests.lab.labtools import SHARED_STACK

    SHARED_STACK.release()

"""Fixtures the integration tests share (the databases and the identity API are the
root conftest's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Services
from tests.integration.computeapi import Compute


@pytest.fixture
def compute(services: Services, tmp_path: Path) -> Iterator[Compute]:
    """A compute API with no hypervisor (add hosts with ``add_host``)."""
    c = Compute(services, tmp_path)
    yield c
    c.stop()

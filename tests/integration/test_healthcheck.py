"""``/healthcheck`` tells its details only to this host's loopback and to admins.

Regression (issue 9): it answered anyone with every check's error text, which
names internal hosts (the database's address, the broker's). A caller from
another address now gets the status and a plain ``OK``/``unavailable``; an
admin token or a loopback peer (the OCF monitor) still gets the details.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import requests

from core.common.server import AppServers, Listener
from core.image.api import create_app as image_app
from tests.conftest import Services
from tests.rabbitmq import free_port


def own_address() -> str | None:
    """An address of this machine that is not loopback (traffic to it stays here)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False)
    found = [a for a in out.stdout.split() if ":" not in a and not a.startswith("127.")]
    return found[0] if found else None


@pytest.fixture
def image_on_lan(services: Services) -> Iterator[str]:
    address = own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    listen = f"{address}:{free_port()}"
    servers = AppServers([Listener("image", listen, image_app(services.cfg, services.db))],
                         threads=4)
    servers.start()
    yield f"http://{listen}"
    servers.stop()


def test_details_only_for_loopback_and_admins(services: Services, image_on_lan: str) -> None:
    member = services.member("hp", "hu")
    # from another address: status and a plain word, nothing else
    for headers in ({}, {"X-Auth-Token": member}, {"X-Auth-Token": "not-a-token"}):
        plain = requests.get(f"{image_on_lan}/healthcheck", headers=headers, timeout=30)
        assert plain.status_code == 200 and plain.text == "OK", plain.text
        assert plain.headers["Content-Type"].startswith("text/plain")
    admin = requests.get(f"{image_on_lan}/healthcheck", timeout=30,
                         headers={"X-Auth-Token": services.admin_token})
    assert admin.status_code == 200 and admin.json()["checks"]["database"]["ok"] is True
    # the OCF monitor asks over loopback: details, no token needed
    local = requests.get(f"{services.url('image')}/healthcheck", timeout=30)
    assert local.json()["service"] == "image" and "store" in local.json()["checks"]
    # a failing check: 503 for everyone, its error text only for those who may see it
    store = services.cfg.image_store_path
    store.rename(store.with_name("elsewhere"))  # (as root, a mode would not stop a write)
    try:
        down = requests.get(f"{image_on_lan}/healthcheck", timeout=30)
        assert down.status_code == 503 and down.text == "unavailable"
        told = requests.get(f"{image_on_lan}/healthcheck", timeout=30,
                            headers={"X-Auth-Token": services.admin_token})
        assert told.status_code == 503
        assert "not writable" in told.json()["checks"]["store"]["detail"]
    finally:
        store.with_name("elsewhere").rename(store)

"""A live compute API on the test cloud, without a hypervisor: hosts are compute service
rows written directly (what an agent registers), so placement is real but nothing boots.
The ``compute`` fixture (tests/integration/conftest.py) hands one to a test."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import requests

from core.common.bus import make_bus
from core.common.server import AppServers, Listener
from core.common.timeutil import now
from core.compute.api import create_app
from core.compute.models import ComputeService
from tests.conftest import Services


class Compute:
    """The compute API served on the test cloud's compute address, with a public
    image ``t`` (8 MiB qcow2) to boot from."""

    def __init__(self, services: Services, tmp_path: Path) -> None:
        self.services = services
        self.bus = make_bus("local")
        self.servers = AppServers([Listener("compute", services.cfg.compute.listen,
                                            create_app(services.cfg, services.db, self.bus))])
        self.servers.start()
        self.url = f"http://{services.cfg.compute.listen}/v2.1"
        disk = tmp_path / "t.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"], check=True)
        image = services.call("POST", "image", "/v2/images", json={
            "name": "t", "disk_format": "qcow2", "container_format": "bare",
            "visibility": "public"}).json()
        services.call("PUT", "image", f"/v2/images/{image['id']}/file",
                      data=disk.read_bytes(), headers={"Content-Type": "application/octet-stream"})
        self.image = image["id"]

    def add_host(self, name: str, slots: int = 10) -> None:
        """A host with room for ``slots`` m1.tiny (256 MiB) instances."""
        def unit(s: Any) -> None:
            s.add(ComputeService(host=name, enabled=True, forced_down=False, reserved=False,
                                 last_seen=now(), vcpus=64, memory_mb=256 * slots,
                                 disk_gb=1000, reserved_memory_mb=0, ram_ratio=1.0,
                                 cpu_ratio=4.0, created_at=now(), updated_at=now()))
        self.services.db.run_in_transaction(unit)

    def call(self, method: str, path: str, token: str | None = None,
             **kwargs: Any) -> requests.Response:
        headers = {"X-Auth-Token": token or self.services.admin_token,
                   **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def boot(self, name: str, token: str | None = None, **extra: Any) -> requests.Response:
        return self.call("POST", "/servers", token, json={"server": {
            "name": name, "imageRef": self.image, "flavorRef": "1", "networks": "auto"},
            **extra})

    def stop(self) -> None:
        self.servers.stop()
        self.bus.close()

"""Boot benchmark: from ``POST /servers`` to ACTIVE and to the guest's console marker.

Runs a real all-in-one (its own state directory, free loopback ports, the
machine's libvirtd, QEMU under TCG, the tiny guest) and boots 1, 5 and 10
tiny guests at once. For each guest it records, relative to the POST:

* ``accepted``: the API answered 202 (validation, port, scheduling claim done);
* ``scheduled`` / ``spawn_started``: from the instance row (the claim; the agent
  picking the work up);
* ``active``: ``launched_at``, the domain started and the row ACTIVE;
* ``marker``: ``HAVEN-TINY-BOOTED`` appeared in the serial console log (the guest's
  kernel and init ran), seen by polling the log file every 0.1 s.

Prints one JSON document and one human line per batch size; guests are deleted
between batches. Usage: python tests/bench/boot.py [--sizes 1,5,10] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402

MARKER = b"HAVEN-TINY-BOOTED"
PHASES = ("accepted", "scheduled", "spawn_started", "active", "marker")


class Cloud:
    def __init__(self, work: Path) -> None:
        self.state = work / "state"
        self.ports = {s: free_port() for s in ("identity", "compute", "image", "network")}
        cmd = [str(Path(sys.executable).parent / "haven"), "all-in-one", "--state-dir",
               str(self.state), "--clouds-yaml", str(work / "clouds.yaml"), "--set",
               f"compute.demo_image_dir={ROOT / '.haven-bench' / 'tiny'}",
               "--set", "compute.shutdown_timeout=0", "--set", "log.level=WARNING",
               # 10 one-vCPU guests on a 2-core host: the default 4x overcommit (8 vCPUs)
               # would refuse the last two, which is placement working, not a boot time
               "--set", "compute.cpu_allocation_ratio=8.0"]
        for service, port in self.ports.items():
            cmd += ["--set", f"{service}.listen=127.0.0.1:{port}"]
        env = dict(os.environ, HAVEN_ADMIN_PASSWORD="bench-admin")
        self.log = open(work / "aio.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env, start_new_session=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "Ctrl-C stops" in line:
                break
        else:
            raise RuntimeError(f"all-in-one failed; see {work / 'aio.log'}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        resp = requests.post(f"{self.url('identity')}/v3/auth/tokens", timeout=30, json={
            "auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"id": "default"}, "password": "bench-admin"}}},
                "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
        self.headers = {"X-Auth-Token": resp.headers["X-Subject-Token"]}
        project = resp.json()["token"]["project"]["id"]  # sizes pass the default quotas
        requests.put(f"{self.url('compute')}/v2.1/os-quota-sets/{project}",
                     headers=self.headers, timeout=30, json={"quota_set": {
                         "instances": -1, "cores": -1, "ram": -1}}).raise_for_status()
        images = requests.get(f"{self.url('image')}/v2/images?name=tiny", headers=self.headers,
                              timeout=30).json()["images"]
        self.image = images[0]["id"]

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(timeout=60)
        self.log.close()

    def row(self, instance_id: str) -> dict[str, Any]:
        conn = sqlite3.connect(self.state / "haven.db")
        try:
            conn.row_factory = sqlite3.Row
            found = conn.execute("SELECT * FROM instances WHERE id = ?",
                                 (instance_id,)).fetchone()
            return dict(found) if found else {}
        finally:
            conn.close()

    def boot(self, name: str, out: dict[str, Any]) -> None:
        t0 = time.time()
        resp = requests.post(f"{self.url('compute')}/v2.1/servers", headers=self.headers,
                             timeout=120, json={"server": {
                                 "name": name, "imageRef": self.image, "flavorRef": "1",
                                 "networks": "auto"}})
        out["t0"] = t0
        out["accepted"] = time.time() - t0
        if resp.status_code != 202:
            out["error"] = resp.text
            return
        out["id"] = resp.json()["server"]["id"]
        log = self.state / "instances" / out["id"] / "console.log"
        deadline = t0 + 300
        while time.time() < deadline and "marker" not in out:
            try:
                if MARKER in log.read_bytes():
                    out["marker"] = time.time() - t0
            except FileNotFoundError:
                pass
            time.sleep(0.1)
        if "marker" not in out:  # keep the evidence: what did the guest print?
            try:
                out["console_tail"] = log.read_bytes()[-600:].decode(errors="replace")
            except FileNotFoundError:
                out["console_tail"] = "(no console log)"

    def delete_all(self) -> None:
        servers = requests.get(f"{self.url('compute')}/v2.1/servers", headers=self.headers,
                               timeout=30).json()["servers"]
        for s in servers:
            requests.delete(f"{self.url('compute')}/v2.1/servers/{s['id']}",
                            headers=self.headers, timeout=30)
        deadline = time.time() + 120
        while time.time() < deadline and requests.get(
                f"{self.url('compute')}/v2.1/servers", headers=self.headers,
                timeout=30).json()["servers"]:
            time.sleep(0.5)


def batch(cloud: Cloud, size: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in range(size)]
    threads = [threading.Thread(target=cloud.boot, args=(f"bench-{size}-{i}", results[i]))
               for i in range(size)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for r in results:
        if "id" in r:
            row = cloud.row(r["id"])
            for phase, column in (("scheduled", "scheduled_at"),
                                  ("spawn_started", "spawn_started_at"),
                                  ("active", "launched_at")):
                if row.get(column):
                    r[phase] = row[column] - r["t0"]
    return results


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"errors": sum(1 for r in results if "error" in r or "marker"
                                         not in r)}
    failures = [{k: r.get(k) for k in ("id", "error", "console_tail") if r.get(k)}
                for r in results if "error" in r or "marker" not in r]
    if failures:
        out["failures"] = failures
    for phase in PHASES:
        values = [r[phase] for r in results if phase in r]
        if values:
            out[phase] = {"p50_s": round(statistics.median(values), 2),
                          "max_s": round(max(values), 2)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,5,10")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    report: dict[str, Any] = {"benchmark": "boot", "cpus": os.cpu_count(), "virt": "qemu (TCG)",
                              "guest": "tiny (m1.tiny, 256 MiB)", "batches": {}}
    with tempfile.TemporaryDirectory(prefix="haven-bench-boot-") as tmp:
        cloud = Cloud(Path(tmp))
        try:
            batch(cloud, 1)  # warm-up: base image download, first domain start
            cloud.delete_all()
            for size in sizes:
                runs = []
                for _ in range(args.runs):
                    runs.extend(batch(cloud, size))
                    cloud.delete_all()
                report["batches"][str(size)] = summary(runs)
        finally:
            cloud.delete_all()
            cloud.stop()
    print(json.dumps(report, indent=2))
    for size, s in report["batches"].items():
        parts = [f"{p} p50 {s[p]['p50_s']}s max {s[p]['max_s']}s" for p in PHASES if p in s]
        print(f"{size:>3} guests: " + "; ".join(parts) + f"; errors {s['errors']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

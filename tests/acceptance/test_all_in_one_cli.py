"""``make run``'s all-in-one as a real process, driven by the stock ``openstack`` CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import free_port

BIN = Path(sys.executable).parent


class AllInOne:
    """A running ``haven all-in-one`` with its output collected."""

    def __init__(self, state: Path, clouds: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OS_", "HAVEN_"))}
        self.proc = subprocess.Popen(
            [str(BIN / "haven"), "all-in-one", "--state-dir", str(state), "--clouds-yaml",
             str(clouds), "--set", f"identity.listen=127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(60):
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


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump({"clouds": {"other": {"auth": {"auth_url": "x"}}}}))
    yield tmp_path / "state", clouds


def test_all_in_one_with_the_openstack_cli(paths: tuple[Path, Path]) -> None:
    state, clouds = paths
    port = free_port()
    aio = AllInOne(state, clouds, port)
    try:
        written = yaml.safe_load(clouds.read_text())["clouds"]
        assert set(written) == {"other", "haven"}  # merged, not clobbered
        assert (clouds.stat().st_mode & 0o777) == 0o600

        issued = openstack(clouds, "token", "issue", "-f", "json")
        assert issued.returncode == 0, issued.stderr
        assert json.loads(issued.stdout)["project_id"]

        assert openstack(clouds, "project", "create", "demo").returncode == 0
        made = openstack(clouds, "user", "create", "--password", "alice-pw", "alice")
        assert made.returncode == 0, made.stderr
        added = openstack(clouds, "role", "add", "--project", "demo", "--user", "alice",
                          "member")
        assert added.returncode == 0, added.stderr
        listed = openstack(clouds, "project", "list", "-f", "json")
        assert {p["Name"] for p in json.loads(listed.stdout)} == {"admin", "demo"}
        assignments = openstack(clouds, "role", "assignment", "list", "--names", "-f", "json")
        assert {"Role": "member", "Project": "demo@Default"}.items() <= next(
            a for a in json.loads(assignments.stdout) if a["User"] == "alice@Default").items()

        alice = ("alice", "alice-pw", "demo")
        assert openstack(clouds, "token", "issue", user=alice).returncode == 0
        refused = openstack(clouds, "project", "create", "evil", user=alice)
        assert refused.returncode != 0 and "403" in refused.stderr
        wrong = openstack(clouds, "token", "issue", user=("alice", "nope", "demo"))
        assert wrong.returncode != 0 and "401" in wrong.stderr

        bad = requests.post(f"http://127.0.0.1:{port}/v3/auth/tokens", data="{oops",
                            headers={"Content-Type": "application/json"}, timeout=10)
        assert bad.status_code == 400 and "Malformed JSON" in bad.json()["error"]["message"]
    finally:
        rc = aio.stop()
    assert rc == 0
    assert "Haven stopped." in "".join(aio.lines)
    assert "Traceback" not in "".join(aio.lines)

    # A second start reuses the state: same admin, same password, data kept.
    password = (state / "admin-password").read_text().strip()
    time.sleep(0.2)
    again = AllInOne(state, clouds, port)
    try:
        assert "(existing)" in "".join(again.lines)
        auth = yaml.safe_load(clouds.read_text())["clouds"]["haven"]["auth"]
        assert auth["password"] == password
        listed = openstack(clouds, "project", "list", "-f", "json")
        assert "demo" in {p["Name"] for p in json.loads(listed.stdout)}
    finally:
        assert again.stop() == 0


def test_all_in_one_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "haven.yaml"
    cfg.write_text("identity:\n  token_expiration: forever\n")
    result = subprocess.run([str(BIN / "haven"), "all-in-one", "--config", str(cfg),
                             "--state-dir", str(tmp_path / "s")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "identity.token_expiration" in result.stderr
    assert "Traceback" not in result.stderr

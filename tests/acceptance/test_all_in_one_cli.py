"""``make run``'s all-in-one as a real process, driven by the stock ``openstack`` CLI."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.acceptance.helpers import BIN, AllInOne, openstack
from tests.conftest import free_port


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
        assert {p["Name"] for p in json.loads(listed.stdout)} == {"admin", "demo", "service"}
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

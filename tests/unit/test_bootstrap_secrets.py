"""No secret in any process's arguments on the cluster bootstrap's path (issue 9).

Every user of a node reads every process's arguments (``ps``, /proc/PID/cmdline).
The bootstrap used to run ``mysql -e "... IDENTIFIED BY 'password'"``, and a plan's
fence password became a ``pcs stonith create ... password=...`` argument. These
tests run the bootstrap's stages for real against a recording runner (no cluster:
it answers crm_mon with a settled cluster) and look at every argv it was given.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from core.common.cliutil import UsageError
from ha.bootstrap import nodeconf
from ha.bootstrap.cib import ClusterPlan
from ha.bootstrap.cli import load_plan
from ha.bootstrap.run import Bootstrap, save_script, stages
from ha.bootstrap.tls import new_ca

NODES = ("n1", "n2", "n3")
DB_PASSWORD = "dbpass-7f3a'word\\x"  # quotes and backslashes: escaped in SQL
FENCE = {n: f"ipmi-secret-{n}" for n in NODES}
PLAN = ClusterPlan(nodes=NODES, vip="10.9.0.100/24", vip_nic="eth0",
                   addresses={"n1": "10.9.0.1", "n2": "10.9.0.2", "n3": "10.9.0.3"},
                   hypervisors=("n2",), fence_agent="fence_ipmilan",
                   fence_options={n: {"ip": f"10.8.0.{i}", "username": "admin"}
                                  for i, n in enumerate(NODES, start=1)},
                   fence_password_files=True)
SECRETS = nodeconf.Secrets(db_password=DB_PASSWORD, bus_password="bus-secret",
                           service_password="service-secret", erlang_cookie="COOKIESECRET",
                           fence_passwords=FENCE)
RESOURCES = ["galera", "rabbitmq", "bus-members", "haven-identity", "haven-compute-api",
             "haven-image", "haven-network", "haven-compute", "haven-evacuator", "vip"]


def settled_cluster() -> str:
    """crm_mon XML of a cluster where every resource of the plan runs everywhere."""
    rows = [f'<resource id="{r}" role="{"Promoted" if r == "galera" else "Started"}" '
            f'active="true" failed="false"><node name="{n}"/></resource>'
            for r in RESOURCES for n in NODES if r != "haven-compute" or n in PLAN.hypervisors]
    rows += [f'<resource id="haven-l3-{k}" role="Started" active="true" failed="false">'
             '<node name="n1"/></resource>' for k in range(PLAN.l3_shards)]  # one node each
    return ('<pacemaker-result><summary><current_dc present="true" name="n1" '
            f'with_quorum="true"/></summary><resources>{"".join(rows)}</resources>'
            "</pacemaker-result>")


class Recorder:
    """Records every command with its stdin; nothing exists yet, everything succeeds."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), stdin))
        if argv[0] == "crm_mon":
            return subprocess.CompletedProcess(list(argv), 0, settled_cluster(), "")
        if argv[0] == "cibadmin":  # an empty CIB: every object is created
            return subprocess.CompletedProcess(list(argv), 0, "<cib><configuration>"
                                               "<resources/></configuration></cib>", "")
        return subprocess.CompletedProcess(list(argv), 0, "", "")


def secrets_in(text: str) -> list[str]:
    """The secrets ``text`` shows, raw or escaped (each is found by a part that no
    quoting changes)."""
    markers = ["dbpass-7f3a", SECRETS.bus_password, SECRETS.service_password,
               SECRETS.erlang_cookie, *FENCE.values()]
    return [m for m in markers if m in text]


def test_the_bootstrap_puts_no_secret_in_any_command_line(tmp_path: Path) -> None:
    db_url = nodeconf.haven_config(PLAN, "n1", SECRETS).split("url: ", 1)[1].split("\n")[0]
    recorder = Recorder()
    boot = Bootstrap(PLAN, runner=recorder)
    # no waiting: the recorder's cluster is settled at the first look, or never
    boot.run_stages([replace(s, timeout=0) for s in stages(PLAN, "/usr/bin/haven", db_url)])
    leaked = [(argv, secrets_in(" ".join(argv))) for argv, _ in recorder.calls
              if secrets_in(" ".join(argv))]
    assert leaked == []
    # the secrets did reach the commands that need them, through stdin and files
    fed = [(argv, stdin) for argv, stdin in recorder.calls if stdin is not None]
    assert [argv[0] for argv, _ in fed] == ["mysql"]
    assert "IDENTIFIED BY 'dbpass-7f3a\\'word\\\\x'" in (fed[0][1] or "")
    stonith = [argv for argv, _ in recorder.calls if argv[1:3] == ["stonith", "create"]]
    assert len(stonith) == 3 and all(
        f"password_script=cat /etc/haven/fence/{a[3].removeprefix('fence-')}.password" in a
        for a in stonith)
    # the saved script holds the password in mysql's input only, and is private
    script = tmp_path / "bootstrap.sh"
    script.write_text("an older script\n")
    script.chmod(0o644)
    save_script(boot.done, script)
    assert oct(script.stat().st_mode & 0o777) == "0o600"
    text = script.read_text()
    mysql_line = next(line for line in text.splitlines() if line.startswith("mysql"))
    assert mysql_line == "mysql --batch <<'HAVEN_INPUT'" and DB_PASSWORD.replace(
        "\\", "\\\\").replace("'", "\\'") in text
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_node_config_writes_each_fence_password_privately_on_every_node(
        tmp_path: Path) -> None:
    for node in NODES:
        nodeconf.write_node_files(PLAN, node, SECRETS, new_ca("t"), tmp_path / node)
        for fenced in NODES:
            path = tmp_path / node / "etc/haven/fence" / f"{fenced}.password"
            assert path.read_text() == FENCE[fenced] + "\n"
            assert oct(path.stat().st_mode & 0o777) == "0o600"
    short = nodeconf.Secrets(**{**SECRETS.__dict__, "fence_passwords": {"n1": "x"}})
    with pytest.raises(ValueError, match="no password for n2, n3"):
        nodeconf.node_files(PLAN, "n1", short, new_ca("t"))


@pytest.mark.parametrize("key", ["password", "passwd"])
def test_a_fence_password_in_the_plan_is_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match=f"{key}: a secret does not belong in the plan"):
        ClusterPlan(nodes=("a",), vip="10.0.0.9/24", vip_nic="eth0",
                    fence_options={"a": {"ip": "10.8.0.1", key: "hunter2"}})
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"nodes: [a]\nvip: 10.0.0.9/24\nvip_nic: eth0\n"
                    f"fence_options: {{a: {{{key}: hunter2}}}}\n")
    with pytest.raises(UsageError, match="fence_password_files"):
        load_plan(plan)

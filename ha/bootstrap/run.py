"""``haven cluster bootstrap``: load the whole CIB, stage by stage, on a formed cluster.

Stages, each waited on through what ``crm_mon`` reports before the next begins:

1. fencing (devices that already exist are left as they are);
2. Galera and RabbitMQ; wait until Galera is promoted and the broker runs on
   every node;
3. the database: Haven's schema user and ``haven bootstrap`` (schema, admin,
   catalog at the VIP, flavors, provider network), once, on this node;
4. the Haven services, the VIP and the constraints; wait until all run.

Every command run is also written, in order, to a script an operator can read
and rerun (``create`` of an existing resource is skipped, an existing constraint
is reported and kept). The script holds the database password: mode 0600.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ha.bootstrap import cib
from ha.bootstrap.cib import ClusterPlan, Command
from ha.bootstrap.nodeconf import DB_NAME
from ha.crm import ClusterView, parse_crm_mon

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class BootstrapError(Exception):
    """A stage failed or did not settle in time; the message says which and why."""


def local_runner(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


@dataclass
class Stage:
    name: str
    commands: list[Command]
    settled: Callable[[ClusterView], bool] | None
    timeout: float


def database_commands(plan: ClusterPlan, haven_binary: str, db_url: str) -> list[Command]:
    """Create Haven's database and user (from the node's configured URL), then
    ``haven bootstrap``. Idempotent: IF NOT EXISTS, and bootstrap keeps what exists."""
    url = urlsplit(db_url)
    user, password = unquote(url.username or ""), unquote(url.password or "")
    if not user or not password:
        raise BootstrapError("database.url in the Haven config needs a user and a password")
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    sql = (f"CREATE DATABASE IF NOT EXISTS {DB_NAME} CHARACTER SET utf8mb4; "
           f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{quoted}'; "
           f"GRANT ALL PRIVILEGES ON {DB_NAME}.* TO '{user}'@'%';")
    return [["mysql", "-e", sql], [haven_binary, "bootstrap", "--config", plan.haven_config]]


def stages(plan: ClusterPlan, haven_binary: str, db_url: str) -> list[Stage]:
    nodes = set(plan.nodes)
    api = [f"haven-{s}" for s in cib.API_SERVICES]
    hypervisors = set(plan.hypervisors)

    def data_layer(view: ClusterView) -> bool:
        return (set(view.promoted_on("galera")) == nodes
                and set(view.running_on("rabbitmq")) == nodes
                and set(view.running_on("bus-members")) == nodes)

    def services(view: ClusterView) -> bool:
        ok = all(set(view.running_on(r)) == nodes for r in api) and bool(view.running_on("vip"))
        if hypervisors:
            ok = (ok and set(view.running_on("haven-compute")) == hypervisors
                  and bool(view.running_on("haven-evacuator")))
        return ok

    return [
        Stage("fencing", cib.fencing(plan), None, 60),
        Stage("database and bus", cib.database_and_bus(plan), data_layer, 400),
        Stage("schema and cloud", database_commands(plan, haven_binary, db_url), None, 0),
        Stage("services", cib.haven_services(plan) + cib.constraints(plan), services, 300),
    ]


class Bootstrap:
    def __init__(self, plan: ClusterPlan, runner: Runner = local_runner,
                 progress: Callable[[str], None] = lambda _m: None) -> None:
        self.plan = plan
        self.run = runner
        self.progress = progress
        self.done: list[Command] = []

    def view(self) -> ClusterView | None:
        result = self.run(["crm_mon", "-1", "--output-as=xml"])
        if result.returncode != 0:
            return None
        try:
            return parse_crm_mon(result.stdout)
        except Exception:  # a cluster still starting may print partial output
            return None

    def exists(self, name: str) -> bool:
        return self.run(["crm_resource", "--resource", name, "--query-xml"]).returncode == 0

    def execute(self, command: Command) -> None:
        name = cib.created_name(command)
        if name and self.exists(name):
            self.progress(f"  {name} exists: kept")
            self.done.append(command)
            return
        result = self.run(command)
        if result.returncode != 0:
            output = result.stderr.strip() or result.stdout.strip()
            lines = output.splitlines()
            text = lines[0] if lines else f"exit {result.returncode}"
            if "constraint" in command and "already exists" in output:
                self.progress(f"  constraint exists: kept ({shlex.join(command[2:])})")
            else:
                raise BootstrapError(f"{shlex.join(command[:6])}...: {text}")
        self.done.append(command)

    def wait(self, stage: Stage) -> None:
        assert stage.settled is not None
        deadline = time.monotonic() + stage.timeout
        while True:
            view = self.view()
            if view is not None and stage.settled(view):
                return
            if time.monotonic() > deadline:
                failed = sorted({r.id for rs in (view.instances.values() if view else [])
                                 for r in rs if r.failed})
                raise BootstrapError(f"stage {stage.name!r} did not settle in "
                                     f"{stage.timeout:g} s (failed: {', '.join(failed) or '-'}); "
                                     "see crm_mon and the resources' logs")
            time.sleep(2)

    def run_stages(self, all_stages: Sequence[Stage]) -> None:
        for stage in all_stages:
            self.progress(f"stage: {stage.name}")
            for command in stage.commands:
                self.execute(command)
            if stage.settled is not None:
                self.wait(stage)
                # the script's equivalent of this wait: until the cluster has settled
                self.done.append(["crm_resource", "--wait", f"--timeout={stage.timeout:g}s"])


def save_script(commands: Sequence[Command], path: Path) -> None:
    text = cib.render_script(commands)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)

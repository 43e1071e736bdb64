"""``haven cluster bootstrap``: load the whole CIB, stage by stage, on a formed cluster.

Stages, each waited on through what ``crm_mon`` reports before the next begins:

1. fencing (devices that already exist are left as they are);
2. Galera and RabbitMQ; wait until Galera is promoted and the broker runs on
   every node;
3. the database: Haven's schema user and ``haven bootstrap`` (schema, admin,
   catalog at the VIP, flavors, provider network), once, on this node;
4. the Haven services, the VIP and the constraints; wait until all run.

Every command run is also written, in order, to a script an operator can read
and rerun. A rerun of the bootstrap keeps what the CIB already holds: a command
whose resource, constraint or alert id is in the CIB (read with ``cibadmin
--query``, by id, never by pcs's messages) is skipped. The script holds the
database password (in the input of ``mysql``, never in a command's arguments):
mode 0600.
"""

from __future__ import annotations

import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from core.common.files import write_private
from ha.bootstrap import cib
from ha.bootstrap.cib import CibObject, ClusterPlan, Fed, Step
from ha.bootstrap.nodeconf import DB_NAME
from ha.crm import ClusterView, parse_crm_mon


class Runner(Protocol):
    """Runs one command; ``stdin`` carries a fed step's secret input."""

    def __call__(self, argv: Sequence[str], stdin: str | None = None
                 ) -> subprocess.CompletedProcess[str]: ...


# The elements of a CIB section whose ids a create command names.
CIB_KINDS = {"resources": {"primitive", "clone", "group", "bundle", "master"},
             "constraints": {"rsc_location", "rsc_order", "rsc_colocation", "rsc_ticket"},
             "alerts": {"alert"}}


class BootstrapError(Exception):
    """A stage failed or did not settle in time; the message says which and why."""


def local_runner(argv: Sequence[str], stdin: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
    if stdin is None:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=300, input=stdin)


@dataclass
class Stage:
    name: str
    commands: Sequence[Step]
    settled: Callable[[ClusterView], bool] | None
    timeout: float


def sql_string(text: str) -> str:
    """``text`` as a MariaDB string literal (backslash escapes are on by default)."""
    escaped = (text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
               .replace("\r", "\\r").replace("\0", "\\0"))
    return f"'{escaped}'"


def database_commands(plan: ClusterPlan, haven_binary: str, db_url: str) -> list[Step]:
    """Create Haven's database and user (from the node's configured URL), then
    ``haven bootstrap``. Idempotent: IF NOT EXISTS, and bootstrap keeps what exists.
    The SQL names the password, so ``mysql`` reads it from stdin: ``mysql -e SQL``
    would show it to every user of the node in ``ps``."""
    url = urlsplit(db_url)
    user, password = unquote(url.username or ""), unquote(url.password or "")
    if not user or not password:
        raise BootstrapError("database.url in the Haven config needs a user and a password")
    sql = (f"CREATE DATABASE IF NOT EXISTS {DB_NAME} CHARACTER SET utf8mb4;\n"
           f"CREATE USER IF NOT EXISTS {sql_string(user)}@'%' "
           f"IDENTIFIED BY {sql_string(password)};\n"
           f"GRANT ALL PRIVILEGES ON {DB_NAME}.* TO {sql_string(user)}@'%';\n")
    return [Fed(["mysql", "--batch"], sql),
            [haven_binary, "bootstrap", "--config", plan.haven_config]]


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
        ok = ok and all(len(view.running_on(s)) == 1 for s in cib.l3_shard_ids(plan))
        if hypervisors:
            ok = (ok and set(view.running_on("haven-compute")) == hypervisors
                  and bool(view.running_on("haven-evacuator")))
        return ok

    return [
        Stage("fencing", cib.fencing(plan), None, 60),
        Stage("database and bus", cib.database_and_bus(plan), data_layer, 400),
        Stage("schema and cloud", database_commands(plan, haven_binary, db_url), None, 0),
        Stage("services", cib.haven_services(plan) + cib.retired_constraints(plan)
              + cib.constraints(plan), services, 300),
    ]


class Bootstrap:
    def __init__(self, plan: ClusterPlan, runner: Runner = local_runner,
                 progress: Callable[[str], None] = lambda _m: None) -> None:
        self.plan = plan
        self.run = runner
        self.progress = progress
        self.done: list[Step] = []

    def view(self) -> ClusterView | None:
        result = self.run(["crm_mon", "-1", "--output-as=xml"])
        if result.returncode != 0:
            return None
        try:
            return parse_crm_mon(result.stdout)
        except Exception:  # a cluster still starting may print partial output
            return None

    def cib_ids(self, section: str) -> set[str]:
        """The ids of the objects in a section of the CIB (resources with their clones,
        constraints, alerts). A CIB that cannot be read stops the bootstrap: what
        exists is not guessed."""
        result = self.run(["cibadmin", "--query"])
        if result.returncode != 0:
            raise BootstrapError(f"cannot read the CIB (cibadmin --query: exit "
                                 f"{result.returncode}): {result.stderr.strip()[:200]}")
        try:
            root = ET.fromstring(result.stdout)
        except ET.ParseError as exc:
            raise BootstrapError(f"cibadmin --query printed no CIB: {exc}") from None
        found = root.find(f"configuration/{section}")
        kinds = CIB_KINDS[section]
        return set() if found is None else {
            el.get("id", "") for el in found.iter() if el.tag in kinds}

    def exists(self, obj: CibObject) -> bool:
        return obj.id in self.cib_ids(obj.section)

    def execute(self, step: Step) -> None:
        command = step.argv if isinstance(step, Fed) else step
        obj = cib.created_object(command)
        if obj is not None and self.exists(obj):
            self.progress(f"  {obj.id} exists: kept")
            self.done.append(step)
            return
        gone = cib.deleted_object(command)
        if gone is not None and not self.exists(gone):
            return  # nothing to retire: the script holds no delete of a missing id
        result = self.run(command, step.stdin) if isinstance(step, Fed) else self.run(command)
        if result.returncode != 0:
            lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
            text = lines[0] if lines else f"exit {result.returncode}"
            raise BootstrapError(f"{shlex.join(command[:6])}...: {text}")
        self.done.append(step)

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


def save_script(commands: Sequence[Step], path: Path) -> None:
    """The script holds the database password: 0600 from its creation, even over an
    older script of another mode."""
    write_private(path, cib.render_script(commands))

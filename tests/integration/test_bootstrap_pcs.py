"""The bootstrap's CIB commands through the real ``pcs`` and ``cibadmin``, on a CIB file
(``pcs -f``, ``CIB_file``: Pacemaker's own offline mode, no cluster touched).

A rerun keeps what the CIB holds by reading the objects' ids, never by matching
pcs's error messages: every resource, constraint and alert is found by id, and a
CIB loaded by the commands of before (constraints without explicit ids) is
recognised too, because the ids are the ones pcs generated for them.

pcs reads the agents' meta-data, Haven's included: run under the lab lock after
appliance/setup.sh (the OCF wrappers must be this checkout's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from ha.bootstrap import cib
from ha.bootstrap.run import Bootstrap, BootstrapError

PLAN = cib.ClusterPlan(nodes=("n1", "n2"), vip="10.213.0.100/24", vip_nic="eth0",
                       hypervisors=("n2",), fence_agent="fence_ipmilan")


class FileCluster:
    """Runs commands as Pacemaker's tools do against a CIB file; records pcs calls."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pcs: list[list[str]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        if argv[0] == "pcs":
            self.pcs.append(argv)
            argv = ["pcs", "-f", str(self.path), *argv[1:]]
        return subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=120,
                              env={**os.environ, "CIB_file": str(self.path)})


def empty_cib(path: Path) -> FileCluster:
    for tool in ("pcs", "cibadmin", "fence_ipmilan"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (Debian: pcs, pacemaker, fence-agents)")
    if not Path("/usr/lib/ocf/resource.d/haven/haven-identity").exists():
        pytest.fail("Haven's OCF agents are not installed: run appliance/setup.sh test")
    path.write_text(subprocess.run(["cibadmin", "--empty"], capture_output=True, text=True,
                                   check=True).stdout)
    return FileCluster(path)


@pytest.fixture
def cluster(tmp_path: Path) -> FileCluster:
    return empty_cib(tmp_path / "cib.xml")


def load(cluster: FileCluster) -> Bootstrap:
    boot = Bootstrap(PLAN, runner=cluster)
    for command in cib.all_commands(PLAN):
        boot.execute(command)
    return boot


@dataclass(frozen=True)
class FirstLoad:
    """One bootstrap of an empty CIB, shared by the module's tests (each of its ~80
    ``pcs`` commands costs a Python start): the CIB it left and what it ran."""

    path: Path
    pcs: list[list[str]]
    ids: dict[str, set[str]]
    done: int


@pytest.fixture(scope="module")
def first_load(tmp_path_factory: pytest.TempPathFactory) -> FirstLoad:
    cluster = empty_cib(tmp_path_factory.mktemp("first") / "cib.xml")
    boot = load(cluster)
    return FirstLoad(cluster.path, list(cluster.pcs),
                     {s: boot.cib_ids(s) for s in ("resources", "constraints", "alerts")},
                     len(boot.done))


@pytest.fixture
def loaded(first_load: FirstLoad, tmp_path: Path) -> FileCluster:
    """A copy of the bootstrapped CIB, for a test to change."""
    path = tmp_path / "cib.xml"
    shutil.copyfile(first_load.path, path)
    return FileCluster(path)


def delete_constraints(cluster: FileCluster, ids: set[str]) -> None:
    """Takes constraints out by id with cibadmin, as an older bootstrap had not made them."""
    for cid in sorted(ids):
        done = cluster(["cibadmin", "--delete", "--xpath", f"//constraints/*[@id='{cid}']"])
        assert done.returncode == 0, done.stderr


def test_a_rerun_finds_every_object_by_id_and_runs_nothing_again(
        first_load: FirstLoad, loaded: FileCluster) -> None:
    created = [c for c in first_load.pcs if cib.created_object(c) is not None]
    assert len(created) == len([c for c in cib.all_commands(PLAN)
                                if cib.created_object(c) is not None])
    ids = {obj.id for c in created if (obj := cib.created_object(c)) is not None}
    for section in ("resources", "constraints", "alerts"):
        assert {o.id for c in created if (o := cib.created_object(c)) and
                o.section == section} <= first_load.ids[section], section
    assert "order-galera-clone-haven-identity-clone-mandatory" in ids
    again = load(loaded)
    # only what creates nothing is run again (properties, defaults)
    assert [c for c in loaded.pcs if cib.created_object(c) is not None] == []
    assert len(again.done) == first_load.done


def test_constraints_loaded_without_explicit_ids_are_recognised(
        first_load: FirstLoad, loaded: FileCluster) -> None:
    """A cluster bootstrapped before the ids were explicit: pcs named its constraints;
    the rerun finds them under those names and keeps them (three of them, loaded as
    the commands of before made them, in a CIB otherwise bootstrapped)."""
    old_style = {  # the commands of before, and the id pcs gives each
        "location-fence-n1-n1--INFINITY":
            ["pcs", "constraint", "location", "fence-n1", "avoids", "n1"],
        "order-galera-clone-haven-identity-clone-mandatory":
            ["pcs", "constraint", "order", "promote", "galera-clone", "then", "start",
             "haven-identity-clone"],
        "colocation-haven-identity-clone-galera-clone-INFINITY":
            ["pcs", "constraint", "colocation", "add", "haven-identity-clone", "with",
             "Promoted", "galera-clone", "INFINITY"],
    }
    cluster = loaded
    assert set(old_style) <= first_load.ids["constraints"]
    delete_constraints(cluster, set(old_style))
    boot = Bootstrap(PLAN, runner=cluster)
    assert boot.cib_ids("constraints") == first_load.ids["constraints"] - set(old_style)
    for command in old_style.values():
        done = cluster(command)
        assert done.returncode == 0, done.stderr
    assert boot.cib_ids("constraints") == first_load.ids["constraints"]
    cluster.pcs.clear()
    load(cluster)
    # nothing is made again: the old commands' constraints are found under pcs's names
    assert [c for c in cluster.pcs if cib.created_object(c) is not None] == []


def test_an_unreadable_cib_stops_the_bootstrap(tmp_path: Path) -> None:
    """What exists is not guessed: without the CIB, nothing is created."""
    cluster = FileCluster(tmp_path / "missing.xml")
    with pytest.raises(BootstrapError, match="cannot read the CIB"):
        Bootstrap(PLAN, runner=cluster).execute(cib.fencing(PLAN)[0])
    assert cluster.pcs == []


def test_a_failing_pcs_command_stops_the_bootstrap_with_pcs_own_words(
        cluster: FileCluster) -> None:
    with pytest.raises(BootstrapError, match="does not exist"):
        Bootstrap(PLAN, runner=cluster).execute(cib.order("start", "nothing-clone", "start",
                                                          "vip"))


def test_a_rerun_retires_the_bus_orders_of_an_older_cluster(loaded: FileCluster) -> None:
    """Before, every service was ordered after the bus: as Mandatory (a broker restart
    restarted the node's APIs and moved the VIP), then as Optional (a rejoining node's
    services waited for its broker's rejoin). A rerun of the bootstrap deletes those
    constraints (by id); a second rerun deletes nothing."""
    cluster = loaded
    old = {"haven-identity-clone": [], "haven-compute-clone": [],  # the old commands
           "haven-image-clone": ["kind=Optional"]}
    for svc, kind in old.items():
        done = cluster(["pcs", "constraint", "order", "start", "rabbitmq-clone", "then",
                        "start", svc, *kind])  # pcs names them ...-mandatory, ...-Optional
        assert done.returncode == 0, done.stderr
    before = Bootstrap(PLAN, runner=cluster).cib_ids("constraints")
    assert {"order-rabbitmq-clone-haven-identity-clone-mandatory",
            "order-rabbitmq-clone-haven-image-clone-Optional"} <= before
    cluster.pcs.clear()
    rerun = Bootstrap(PLAN, runner=cluster)
    for command in cib.retired_constraints(PLAN) + cib.all_commands(PLAN):
        rerun.execute(command)
    after = rerun.cib_ids("constraints")
    assert not {i for i in after if i.startswith("order-rabbitmq-clone-haven-")}
    deletes = [c for c in cluster.pcs if cib.deleted_object(c) is not None]
    assert len(deletes) == 3  # only the three that existed
    cluster.pcs.clear()
    again = Bootstrap(PLAN, runner=cluster)
    for command in cib.retired_constraints(PLAN) + cib.all_commands(PLAN):
        again.execute(command)
    assert [c for c in cluster.pcs if cib.deleted_object(c) is not None] == []

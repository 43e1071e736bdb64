"""The layering the design promises, checked on every module's imports (parsed, not run).

* ``core`` never imports ``ha``: the cloud runs without the cluster; the cluster
  plugs into the cloud through explicit extension points (core/common/extensions.py).
* A service under ``core`` (identity, compute, image, network) never imports
  another service's modules: what they share lives in ``core.common``, which
  itself knows no service (each hands its parts in: schemas, routes). The
  composition modules at the top of ``core`` (the CLI, the all-in-one, the list
  of schema parts) are where services meet, and may import them all.
* Nobody imports a ``_private`` name from another package: what a package lends
  out it names publicly (and documents).

Imports are read with :mod:`ast`, so an import inside a function or under
``TYPE_CHECKING`` counts as much as one at the top of the module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "ha")
SERVICES = ("identity", "compute", "image", "network")


@dataclass(frozen=True)
class Import:
    """One imported module (``from M import a`` yields M and, if a is a module, M.a)."""

    importer: str  # dotted name of the importing module
    path: Path
    line: int
    module: str  # dotted name of what is imported
    names: tuple[str, ...]  # names taken from it (``from M import a, b``), else ()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of a (possibly relative) ``from`` import's module."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(path: Path) -> Iterator[Import]:
    importer = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(importer, path, node.lineno, alias.name, ())
        elif isinstance(node, ast.ImportFrom):
            module = resolve(importer, path.name == "__init__.py", node.level, node.module)
            names = tuple(alias.name for alias in node.names)
            yield Import(importer, path, node.lineno, module, names)


def all_imports(packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    found = []
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            found.extend(imports_of(path))
    return found


def top(module: str, depth: int) -> str:
    return ".".join(module.split(".")[:depth])


def service_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "core" and parts[1] in SERVICES:
        return parts[1]
    return None


def where(imp: Import) -> str:
    return f"{imp.path.relative_to(ROOT)}:{imp.line}: {imp.module}"


def core_imports_of_ha(imports: list[Import]) -> list[str]:
    return [where(i) for i in imports
            if i.importer.split(".")[0] == "core" and i.module.split(".")[0] == "ha"]


def cross_service_imports(imports: list[Import]) -> list[str]:
    bad = []
    for i in imports:
        mine, theirs = service_of(i.importer), service_of(i.module)
        if mine is not None and theirs is not None and mine != theirs:
            bad.append(where(i))
    return bad


def plumbing_imports_of_services(imports: list[Import]) -> list[str]:
    return [where(i) for i in imports
            if top(i.importer, 2) == "core.common" and service_of(i.module) is not None]


def package_of(module: str, is_package: bool) -> str:
    """The package a module belongs to (a package belongs to itself)."""
    return module if is_package else module.rpartition(".")[0]


def is_package(module: str) -> bool:
    return (ROOT / module.replace(".", "/")).is_dir()


def private_imports(imports: list[Import]) -> list[str]:
    bad = []
    for i in imports:
        if i.module.split(".")[0] not in PACKAGES:
            continue  # the standard library's and third parties' business
        mine = package_of(i.importer, i.path.name == "__init__.py")
        theirs = package_of(i.module, is_package(i.module))
        if mine == theirs:
            continue  # within one package, private helpers are shared freely
        private = [p for p in [*i.module.split("."), *i.names]
                   if p.startswith("_") and not p.startswith("__")]
        if private:
            bad.append(f"{where(i)} ({', '.join(private)})")
    return bad


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return all_imports()


def test_core_never_imports_ha(imports: list[Import]) -> None:
    found = core_imports_of_ha(imports)
    assert found == [], "\n".join(found)


def test_services_never_import_each_other(imports: list[Import]) -> None:
    found = cross_service_imports(imports)
    assert found == [], "\n".join(found)


def test_the_shared_plumbing_knows_no_service(imports: list[Import]) -> None:
    found = plumbing_imports_of_services(imports)
    assert found == [], "\n".join(found)


def test_no_private_name_is_imported_from_another_package(imports: list[Import]) -> None:
    found = private_imports(imports)
    assert found == [], "\n".join(found)


# ---- the checks themselves can fail ---------------------------------------------------
def parse(rel: str, source: str) -> list[Import]:
    """Imports of made-up source as if it were the module at ``rel``."""
    path = ROOT / rel
    importer = module_name(path)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(importer, path, node.lineno, a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = resolve(importer, path.name == "__init__.py", node.level, node.module)
            found.append(Import(importer, path, node.lineno, module,
                                tuple(a.name for a in node.names)))
    return found


def test_the_checks_catch_what_they_forbid() -> None:
    fn = "def f():\n    from ha.evacuator import models\n"
    assert core_imports_of_ha(parse("core/compute/x.py", fn))
    assert core_imports_of_ha(parse("core/common/x.py", "import ha.cli\n"))
    assert not core_imports_of_ha(parse("ha/x.py", "import core.cli\n"))
    assert cross_service_imports(parse("core/compute/x.py",
                                       "from core.identity.models import User\n"))
    assert cross_service_imports(parse("core/image/x.py",
                                       "from ..network import ipam\n"))
    assert not cross_service_imports(parse("core/image/x.py",
                                           "from core.common import db\nfrom . import models\n"))
    assert not cross_service_imports(parse("core/cli.py",
                                           "from core.identity import bootstrap\n"))
    assert plumbing_imports_of_services(parse("core/common/migrations/env.py",
                                              "import core.compute.models\n"))
    assert not plumbing_imports_of_services(parse("core/common/x.py",
                                                  "from core.common import db\n"))
    assert private_imports(parse("ha/evacuator/cli.py",
                                 "from core.cli import _common\n"))
    assert private_imports(parse("ha/x.py", "import core.compute._claims\n"))
    assert not private_imports(parse("core/compute/servers.py",
                                     "from core.compute.views import _view\n"))
    assert not private_imports(parse("ha/x.py", "from os import _exit\n"))

"""The README and docs/ name the project's files as they are, and nothing outside it.

A user of Haven has the project and nothing else: a document that sends the reader
to a design note outside the repository (a ``../`` path), or names a module that
has since moved, is wrong. Every repository path in backquotes or in a link, in the
README and in docs/, must exist (a ``*`` in it must match something).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
TOP = ("core/", "ha/", "agents/", "appliance/", "images/", "tests/", "docs/")
CODE = re.compile(r"`([^`\s]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def named_paths(text: str) -> set[str]:
    """Repository paths the text names: backquoted tokens and link targets that start at
    one of the project's top directories (``<placeholders>`` are not paths)."""
    found = set(CODE.findall(text)) | set(LINK.findall(text))
    return {t.rstrip(".,:;") for t in found if t.startswith(TOP) and "<" not in t}


def exists(path: str) -> bool:
    if "*" in path:
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


def module_names(text: str) -> set[str]:
    """Bare module names in backquotes (``states.py``, ``virt/libvirt.py``)."""
    return {t for t in CODE.findall(text)
            if re.fullmatch(r"[\w/]+\.py", t) and not t.startswith(TOP)}


def module_exists(name: str) -> bool:
    return any(any((ROOT / top).glob(f"**/{name}")) for top in TOP)


def test_the_documents_are_found() -> None:
    assert (ROOT / "docs" / "architecture.md") in DOCUMENTS
    assert "docs/architecture.md" in named_paths((ROOT / "README.md").read_text())


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_path_a_document_names_exists(document: Path) -> None:
    text = document.read_text()
    names = named_paths(text)
    assert names, f"{document.name} names no file of the project"
    missing = sorted(n for n in names if not exists(n))
    missing += sorted(n for n in module_names(text) if not module_exists(n))
    assert missing == [], f"{document.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_no_document_points_outside_the_project(document: Path) -> None:
    text = document.read_text()
    outside = [t for t in CODE.findall(text) + LINK.findall(text) if t.startswith("../")]
    assert outside == [], outside


def test_the_checks_see_a_missing_path() -> None:
    text = ("see `core/compute/no_such_module.py`, `no_such_helper.py`, `states.py` and "
            "[x](../notes/DESIGN.md)")
    assert [n for n in named_paths(text) if not exists(n)] == ["core/compute/no_such_module.py"]
    assert [n for n in module_names(text) if not module_exists(n)] == ["no_such_helper.py"]
    assert [t for t in LINK.findall(text) if t.startswith("../")] == ["../notes/DESIGN.md"]

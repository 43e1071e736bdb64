"""Secret files get their mode when they are created (issue 9, transport and secrets)."""

from __future__ import annotations

import os
from pathlib import Path

from core.common.files import write_private


def mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def test_a_secret_written_over_a_world_readable_file_is_private(tmp_path: Path) -> None:
    """The bug: ``os.open(path, O_TRUNC, 0o600)`` over an existing 0644 file keeps
    0644 (the mode only applies to a file the call creates): the secret is readable."""
    path = tmp_path / "admin-password"
    path.write_text("old\n")
    path.chmod(0o644)
    write_private(path, "s3cret\n")
    assert path.read_text() == "s3cret\n"
    assert mode(path) == "0o600"


def test_the_asked_mode_and_owner_hold_and_nothing_is_left_behind(tmp_path: Path) -> None:
    cookie = tmp_path / ".erlang.cookie"
    write_private(cookie, "COOKIE", 0o400)
    write_private(cookie, b"COOKIE2", 0o400, owner=(os.getuid(), os.getgid()))  # over 0400
    assert cookie.read_bytes() == b"COOKIE2" and mode(cookie) == "0o400"
    assert [p.name for p in tmp_path.iterdir()] == [".erlang.cookie"]


def test_a_symlink_in_place_of_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    link = tmp_path / "key"
    link.symlink_to(elsewhere)
    write_private(link, "k")
    assert not link.is_symlink() and link.read_text() == "k" and mode(link) == "0o600"
    assert elsewhere.read_text() == "untouched"

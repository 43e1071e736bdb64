"""Files and directories private to Haven's service user, private from their creation.

The state directory holds the SQLite database, the Fernet keys and passwords;
the image store holds every tenant's images. None of them is anyone else's
business: directories are made 0700 and files 0600 by the call that creates
them (``mkdir``/``os.open`` modes), never tightened afterwards, so there is no
moment where another user can open them. A directory made earlier by an older
Haven loses its bits for others on the next start.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) 0700; an existing one loses every bit for
    others (group bits a hypervisor gave the QEMU user stay: qemuuser.passable_dir)."""
    if not path.parent.exists():
        private_dir(path.parent)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o007:
            path.chmod(mode & ~0o007)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty and 0600 unless it exists; an existing one is made 0600.
    For files another library then opens (SQLite keeps the mode for its journal)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """``os.open`` a file that is 0600 from its creation (an existing file is made 0600:
    O_TRUNC keeps the old mode)."""
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (None for other databases, or in memory)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix or ":memory:" in url:
        return None
    return Path(url[len(prefix):].split("?", 1)[0])

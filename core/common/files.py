"""Writing files that hold secrets: the mode is set when the file is created.

``open(path, "w")`` followed by ``chmod`` leaves a moment where the secret sits
in a file anyone can read, and ``os.open(path, O_TRUNC, 0o600)`` over an existing
file keeps that file's old mode (the mode argument only applies to a file the
call creates): a password written over a 0644 file stays world-readable. Here
every write makes a new file with ``O_CREAT | O_EXCL`` and the wanted mode, and
then renames it over the target: the target is either the old file or the
complete new one, never a partial or a readable secret.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE = 0o600


def write_private(path: str | os.PathLike[str], data: str | bytes, mode: int = PRIVATE,
                  owner: tuple[int, int] | None = None) -> Path:
    """Atomically replace ``path`` with ``data``, created with ``mode`` (0600 unless
    told; the umask can only remove bits, so the mode is never wider than asked).
    ``owner`` (uid, gid) is set before the rename, so the file is never seen with
    the secret and the wrong owner. Returns the path."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target

"""Password hashing: bcrypt at cost >= 12 (Keystone's default), over a SHA-256 digest.

bcrypt reads only the first 72 bytes of its input (and bcrypt 5 refuses longer
input), so passwords are first reduced to the base64 of their SHA-256 digest
(44 bytes, no NUL): every byte of a long passphrase counts, and the cost is
still bcrypt's. The stored string names its scheme so it can change later.
"""

from __future__ import annotations

import base64
import hashlib

import bcrypt

SCHEME = "bcrypt-sha256$"
MAX_PASSWORD_BYTES = 4096  # Keystone's max_password_length


def _prehash(password: str) -> bytes:
    return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())


def hash_password(password: str, cost: int = 12) -> str:
    if cost < 12:
        raise ValueError("bcrypt cost below 12 is weaker than Keystone's default")
    return SCHEME + bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds=cost)).decode()


# Checked against when the user does not exist, so a wrong user name costs the same
# time as a wrong password and does not reveal which names exist.
_DUMMY = SCHEME + bcrypt.hashpw(b"haven-dummy", bcrypt.gensalt(rounds=12)).decode()


def verify_password(password: str, stored: str | None) -> bool:
    candidate = stored if stored and stored.startswith(SCHEME) else _DUMMY
    ok = bcrypt.checkpw(_prehash(password), candidate[len(SCHEME):].encode())
    return ok and candidate is stored

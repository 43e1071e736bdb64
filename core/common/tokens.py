"""Fernet tokens: the key repository and the token payload codec.

A token is a Fernet message (AES-CBC + HMAC) whose plaintext is a compact
binary payload: who, what scope, which roles, when issued and when it expires,
and the audit ids that revocation events match. Any controller holding the
key repository validates a token without asking anyone and nothing is written
per token, which is what lets the API run active-active on every controller.

Key repository layout (Keystone's, so operators recognise it): files named by
integers in one directory; ``0`` is the *staged* key (distributed to every
node before it is ever used to encrypt), the highest number is the *primary*
(encrypts), the rest are *secondary* (only decrypt). Rotation promotes the
staged key, stages a new one and drops the oldest beyond ``max_active_keys``.
"""

from __future__ import annotations

import base64
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from core.common.files import write_private
from core.common.private import private_dir

PAYLOAD_VERSION = 1
MAX_TOKEN_LIFETIME_S = 7 * 24 * 3600  # the longest token_expiration configuration allows
METHOD_BITS = {"password": 1, "token": 2}
SCOPE_UNSCOPED, SCOPE_PROJECT, SCOPE_DOMAIN = 0, 1, 2


class TokenError(Exception):
    """A token that cannot be used: malformed, forged, expired, or revoked."""


class KeyRepositoryError(Exception):
    """The Fernet key directory is missing, empty or unreadable."""


class KeyRepository:
    """The Fernet keys in ``directory``, reloaded when the directory changes.

    Rotation on another node reaches this one as new files (the cluster copies
    the directory); a reload is noticed through the directory's mtime, checked
    at most once a second so validation stays cheap.
    """

    def __init__(self, directory: Path, max_active_keys: int = 3) -> None:
        self.directory = Path(directory)
        self.max_active_keys = max_active_keys
        self._lock = threading.Lock()
        self._fernet: MultiFernet | None = None
        self._mtime_ns = -1
        self._checked_at = 0.0

    def key_indexes(self) -> list[int]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def setup(self) -> bool:
        """Create the repository with a staged and a primary key unless it exists.

        Returns True when keys were created.
        """
        private_dir(self.directory)
        if self.key_indexes():
            return False
        self._write_key(0)
        self.rotate()
        return True

    def rotate(self) -> list[int]:
        """Promote the staged key to primary, stage a new key, prune the oldest.

        Returns the key indexes now present.
        """
        indexes = self.key_indexes()
        if 0 not in indexes:
            self._write_key(0)
            indexes = self.key_indexes()
        new_primary = max(indexes) + 1
        os.replace(self.directory / "0", self.directory / str(new_primary))
        self._write_key(0)
        indexes = self.key_indexes()
        secondaries = [i for i in indexes if i not in (0, new_primary)]
        while len(secondaries) + 2 > self.max_active_keys and secondaries:
            os.unlink(self.directory / str(secondaries.pop(0)))
        self._checked_at = 0.0
        return self.key_indexes()

    def _write_key(self, index: int) -> None:
        write_private(self.directory / str(index), Fernet.generate_key())

    def fernet(self) -> MultiFernet:
        """The MultiFernet of the current keys, primary first (it encrypts)."""
        now = time.monotonic()
        if self._fernet is not None and now - self._checked_at < 1.0:
            return self._fernet
        with self._lock:
            try:
                mtime_ns = self.directory.stat().st_mtime_ns
            except FileNotFoundError as exc:
                raise KeyRepositoryError(f"no Fernet key directory at {self.directory}") from exc
            if self._fernet is None or mtime_ns != self._mtime_ns:
                indexes = self.key_indexes()
                if len(indexes) < 2:
                    raise KeyRepositoryError(
                        f"Fernet key directory {self.directory} needs a staged and a primary key"
                    )
                primary = max(indexes)
                others = sorted((i for i in indexes if i != primary), reverse=True)
                ordered = [primary, *others]
                keys = [Fernet((self.directory / str(i)).read_bytes().strip()) for i in ordered]
                self._fernet = MultiFernet(keys)
                self._mtime_ns = mtime_ns
            self._checked_at = now
            return self._fernet


@dataclass(frozen=True)
class TokenPayload:
    """What a token says. Times are integer microseconds since the epoch."""

    user_id: str
    methods: tuple[str, ...]
    issued_at: int
    expires_at: int
    audit_ids: tuple[bytes, ...]
    roles: tuple[str, ...] = ()
    project_id: str | None = None
    domain_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def scope_type(self) -> int:
        if self.project_id is not None:
            return SCOPE_PROJECT
        if self.domain_id is not None:
            return SCOPE_DOMAIN
        return SCOPE_UNSCOPED

    def audit_id_strings(self) -> list[str]:
        return [base64.urlsafe_b64encode(a).rstrip(b"=").decode() for a in self.audit_ids]


def new_audit_id() -> bytes:
    return os.urandom(16)


def now_us() -> int:
    return time.time_ns() // 1000


def _pack_id(value: str) -> bytes:
    # A uuid4-hex id (the common case) travels as 16 bytes, anything else as text.
    if len(value) == 32:
        try:
            return b"\x00" + bytes.fromhex(value)
        except ValueError:
            pass
    raw = value.encode()
    if len(raw) > 255:
        raise TokenError("id too long for a token")
    return b"\x01" + bytes([len(raw)]) + raw


def _unpack_id(data: bytes, pos: int) -> tuple[str, int]:
    tag = data[pos]
    if tag == 0:
        return data[pos + 1 : pos + 17].hex(), pos + 17
    length = data[pos + 1]
    return data[pos + 2 : pos + 2 + length].decode(), pos + 2 + length


def encode_payload(p: TokenPayload) -> bytes:
    methods = 0
    for m in p.methods:
        methods |= METHOD_BITS[m]
    out = bytearray(struct.pack(">BBB", PAYLOAD_VERSION, methods, p.scope_type))
    out += _pack_id(p.user_id)
    if p.scope_type == SCOPE_PROJECT:
        out += _pack_id(p.project_id or "")
    elif p.scope_type == SCOPE_DOMAIN:
        out += _pack_id(p.domain_id or "")
    out += struct.pack(">QQB", p.issued_at, p.expires_at, len(p.audit_ids))
    for audit in p.audit_ids:
        out += audit
    out += bytes([len(p.roles)])
    for role in p.roles:
        raw = role.encode()
        out += bytes([len(raw)]) + raw
    return bytes(out)


def decode_payload(data: bytes) -> TokenPayload:
    try:
        version, methods, scope = struct.unpack_from(">BBB", data, 0)
        if version != PAYLOAD_VERSION:
            raise TokenError("unknown token version")
        user_id, pos = _unpack_id(data, 3)
        project_id = domain_id = None
        if scope == SCOPE_PROJECT:
            project_id, pos = _unpack_id(data, pos)
        elif scope == SCOPE_DOMAIN:
            domain_id, pos = _unpack_id(data, pos)
        issued_at, expires_at, n_audit = struct.unpack_from(">QQB", data, pos)
        pos += 17
        audit_ids = tuple(data[pos + 16 * i : pos + 16 * (i + 1)] for i in range(n_audit))
        pos += 16 * n_audit
        n_roles = data[pos]
        pos += 1
        roles = []
        for _ in range(n_roles):
            length = data[pos]
            roles.append(data[pos + 1 : pos + 1 + length].decode())
            pos += 1 + length
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise TokenError("malformed token payload") from exc
    names = tuple(name for name, bit in METHOD_BITS.items() if methods & bit)
    return TokenPayload(
        user_id=user_id,
        methods=names,
        issued_at=issued_at,
        expires_at=expires_at,
        audit_ids=audit_ids,
        roles=tuple(roles),
        project_id=project_id,
        domain_id=domain_id,
    )


class TokenCodec:
    """Seal payloads into token strings and open them again, checking expiry."""

    def __init__(self, keys: KeyRepository) -> None:
        self.keys = keys

    def seal(self, payload: TokenPayload) -> str:
        token = self.keys.fernet().encrypt(encode_payload(payload))
        return token.decode().rstrip("=")

    def open(self, token: str, now: int | None = None) -> TokenPayload:
        """Decrypt and decode ``token``; raise TokenError if it is bad or expired."""
        if not token or len(token) > 1024:
            raise TokenError("malformed token")
        padded = token + "=" * (-len(token) % 4)
        try:
            data = self.keys.fernet().decrypt(padded.encode())
        except (InvalidToken, ValueError) as exc:
            raise TokenError("invalid token") from exc
        payload = decode_payload(data)
        if (now if now is not None else now_us()) >= payload.expires_at:
            raise TokenError("token expired")
        return payload


def isoformat_us(us: int) -> str:
    """Keystone's timestamp format: ``2026-11-25T16:23:26.000000Z``."""
    seconds, micro = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micro:06d}Z"

"""Fernet key repository and token payloads."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from core.common.tokens import (
    KeyRepository,
    TokenCodec,
    TokenError,
    TokenPayload,
    decode_payload,
    encode_payload,
    new_audit_id,
    now_us,
)


def payload(**kw: object) -> TokenPayload:
    base: dict[str, object] = dict(
        user_id="0123456789abcdef0123456789abcdef", methods=("password",),
        issued_at=now_us(), expires_at=now_us() + 3_600_000_000,
        audit_ids=(new_audit_id(),), roles=("admin", "member", "reader"),
        project_id="fedcba9876543210fedcba9876543210")
    base.update(kw)
    return TokenPayload(**base)  # type: ignore[arg-type]


def repo(tmp_path: Path, name: str = "keys", max_active: int = 3) -> KeyRepository:
    keys = KeyRepository(tmp_path / name, max_active)
    keys.setup()
    return keys


@pytest.mark.parametrize("kw", [
    {},
    {"project_id": None, "roles": ()},
    {"project_id": None, "domain_id": "default", "user_id": "not-a-uuid-user"},
    {"methods": ("token",), "audit_ids": (new_audit_id(), new_audit_id())},
])
def test_payload_round_trips(kw: dict[str, object]) -> None:
    p = payload(**kw)
    assert decode_payload(encode_payload(p)) == p


def test_tokens_are_short(tmp_path: Path) -> None:
    token = TokenCodec(repo(tmp_path)).seal(payload())
    assert len(token) < 255  # fits the columns clients and proxies assume


def test_expired_tampered_and_foreign_tokens_are_refused(tmp_path: Path) -> None:
    codec = TokenCodec(repo(tmp_path))
    with pytest.raises(TokenError, match="expired"):
        codec.open(codec.seal(payload(expires_at=now_us() - 1)))
    token = codec.seal(payload())
    tampered = token[:40] + ("A" if token[40] != "A" else "B") + token[41:]
    with pytest.raises(TokenError):
        codec.open(tampered)
    with pytest.raises(TokenError):
        TokenCodec(repo(tmp_path, "other")).open(token)
    for junk in ("", "x" * 2000, "%%%%"):
        with pytest.raises(TokenError):
            codec.open(junk)


def test_rotation_promotes_staged_key_and_prunes_oldest(tmp_path: Path) -> None:
    keys = repo(tmp_path, max_active=3)
    assert keys.key_indexes() == [0, 1]
    staged = (keys.directory / "0").read_bytes()
    assert keys.rotate() == [0, 1, 2]
    assert (keys.directory / "2").read_bytes() == staged
    assert keys.rotate() == [0, 2, 3]
    assert (keys.directory / "3").stat().st_mode & 0o777 == 0o600


def test_a_node_with_only_the_staged_key_reads_new_primary_tokens(tmp_path: Path) -> None:
    """Why keys are staged: a node synced before rotation can already decrypt."""
    leader = repo(tmp_path, "leader")
    follower_dir = tmp_path / "follower"
    shutil.copytree(leader.directory, follower_dir)
    follower = TokenCodec(KeyRepository(follower_dir))
    leader.rotate()  # the leader now encrypts with the key that was staged
    token = TokenCodec(leader).seal(payload())
    assert follower.open(token).user_id == payload().user_id


def test_live_tokens_survive_rotation_until_their_key_is_pruned(tmp_path: Path) -> None:
    keys = repo(tmp_path, max_active=3)
    codec = TokenCodec(keys)
    token = codec.seal(payload())
    keys.rotate()
    codec.open(token)
    keys.rotate()
    keys.rotate()
    time.sleep(0.01)
    codec.keys._checked_at = 0.0  # skip the once-a-second reload throttle in this test
    with pytest.raises(TokenError):
        codec.open(token)

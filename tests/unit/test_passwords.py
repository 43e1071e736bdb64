"""Password hashing keeps Keystone's cost and never truncates."""

from __future__ import annotations

import pytest

from core.identity.passwords import hash_password, verify_password


def test_hash_is_bcrypt_cost_12_and_verifies() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("bcrypt-sha256$$2b$12$")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsE", stored)
    assert not verify_password("correct horse", None)


def test_bytes_beyond_72_still_count() -> None:
    base = "x" * 80
    stored = hash_password(base + "a")
    assert not verify_password(base + "b", stored)


def test_cost_below_keystone_default_is_refused() -> None:
    with pytest.raises(ValueError):
        hash_password("pw", cost=10)

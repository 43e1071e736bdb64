"""The ``key_pairs`` table: Nova's keypairs, per user (not per project), by name.

A row holds only the public half: a generated key's private half is in the
answer to the request that made it and nowhere else. ``(user_id, name)`` is
unique, so two concurrent imports of one name give one row and one 409.
"""

from __future__ import annotations

from sqlalchemy import Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.common.db import Timestamp
from core.compute.models import ComputeTable

KEYPAIR_TYPE_SSH = "ssh"


class KeyPair(ComputeTable):
    __tablename__ = "key_pairs"
    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_key_pairs_user_id_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(255))
    public_key: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16), default=KEYPAIR_TYPE_SSH)
    created_at: Mapped[float] = mapped_column(Timestamp)

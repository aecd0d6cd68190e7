"""Operator API keys: named, scoped, stored as the SHA-256 of the key, revocable."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import wall_now
from billfold.db import Base


class OperatorKey(Base):
    __tablename__ = "operator_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # opk_…
    name: Mapped[str] = mapped_column(String(200))
    # SHA-256 of the key: keys are 256-bit random, so a fast hash is enough and the
    # database never holds a usable credential (as agent tokens).
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))  # shown in lists, to tell keys apart
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=wall_now)
    revoked_at: Mapped[datetime | None]

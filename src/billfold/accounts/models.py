"""Accounts and their agent access tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import now, wall_now
from billfold.db import Base


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active")
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    processor_customer_id: Mapped[str | None] = mapped_column(String(64))
    # Sandbox only: the test clock whose time the account lives on (None: real time).
    test_clock_id: Mapped[str | None] = mapped_column(ForeignKey("test_clocks.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=now)


class AgentToken(Base):
    __tablename__ = "agent_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    # SHA-256 of the token: tokens are 256-bit random, so a fast hash is enough and
    # the database never holds a usable credential.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_prefix: Mapped[str] = mapped_column(String(16))
    # Tokens live on real time, whatever clock their account is on.
    created_at: Mapped[datetime] = mapped_column(default=wall_now)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

"""Sandbox test clocks: each one a time of its own for the accounts created on it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import wall_now
from billfold.db import Base, Micros


class TestClock(Base):
    """A clock's time is real time plus `offset_micros`: it runs at real speed and only
    ever jumps forward (an advance). Created and updated times are real time."""

    __tablename__ = "test_clocks"
    __test__ = False  # not a pytest class

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    offset_micros: Mapped[int] = mapped_column(Micros, default=0)
    created_at: Mapped[datetime] = mapped_column(default=wall_now)
    updated_at: Mapped[datetime] = mapped_column(default=wall_now)

"""The sandbox test clock's offset, shared by every process on the database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import wall_now
from billfold.db import Base, Micros


class TestClock(Base):
    __tablename__ = "test_clock"
    __test__ = False  # not a pytest class

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    offset_micros: Mapped[int] = mapped_column(Micros, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=wall_now)

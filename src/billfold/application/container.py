"""Build the services container from settings: the one place concrete parts are chosen."""

from __future__ import annotations

from billfold.application.events import WIRED
from billfold.config import Settings
from billfold.db import Database
from billfold.processors.sandbox import SandboxProcessor
from billfold.security import hash_secret
from billfold.services import Services

__all__ = ["WIRED", "build_services"]


def build_services(settings: Settings, admin_key: str) -> Services:
    database = Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    processor = SandboxProcessor(database, publishable_key=settings.sandbox_publishable_key)
    return Services(
        settings=settings,
        database=database,
        processor=processor,
        admin_key_hash=hash_secret(admin_key),
    )

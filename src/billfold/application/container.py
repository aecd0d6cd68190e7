"""Build the services container from settings: the one place concrete parts are chosen."""

from __future__ import annotations

from billfold.application.events import WIRED
from billfold.config import Settings
from billfold.db import Database
from billfold.processors.base import Processor
from billfold.processors.sandbox import SandboxProcessor
from billfold.processors.stripe import StripeProcessor
from billfold.security import hash_secret
from billfold.services import Services

__all__ = ["WIRED", "build_services"]


def build_services(settings: Settings, admin_key: str) -> Services:
    database = Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        connect_timeout=settings.db_connect_timeout_seconds,
        statement_timeout_ms=settings.db_statement_timeout_ms,
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    return Services(
        settings=settings,
        database=database,
        processor=build_processor(settings, database),
        admin_key_hash=hash_secret(admin_key),
        previous_admin_key_hash=(
            hash_secret(settings.admin_key_previous) if settings.admin_key_previous else None
        ),
    )


def build_processor(settings: Settings, database: Database) -> Processor:
    if settings.processor == "stripe":
        assert settings.stripe_secret_key and settings.stripe_publishable_key  # validated
        return StripeProcessor(
            secret_key=settings.stripe_secret_key,
            publishable_key=settings.stripe_publishable_key,
            webhook_secret=settings.stripe_webhook_secret,
            api_base=settings.stripe_api_base,
            public_api_base=settings.stripe_public_api_base,
            timeout_seconds=settings.stripe_timeout_seconds,
        )
    return SandboxProcessor(database, publishable_key=settings.sandbox_publishable_key)

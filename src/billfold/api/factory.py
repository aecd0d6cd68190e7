"""The API app for a process a supervisor started: each of `billfold serve --workers N`'s
API processes, or any ASGI server (`uvicorn --factory billfold.api.factory:create_app_from_env`).

Everything comes from the environment (`BILLFOLD_*`): `serve` resolves the admin key,
migrates and seeds once, in the parent, and hands the key down as BILLFOLD_ADMIN_KEY.
"""

from __future__ import annotations

import gc

from fastapi import FastAPI

from billfold import logs, tracing
from billfold.api.app import create_app
from billfold.application.container import build_services
from billfold.config import Settings, get_settings
from billfold.services import Services

__all__ = ["create_app_from_env", "serving_app"]


def create_app_from_env() -> FastAPI:
    # A spawned process starts with bare logging (serve hands uvicorn no log config).
    settings = get_settings()
    logs.configure(settings.log_format)
    return serving_app(build_services(settings, admin_key(settings)))


def serving_app(services: Services) -> FastAPI:
    """The app for a server process, its start-up objects frozen out of the garbage
    collector: a full collection then walks only what requests allocate, not the hundreds
    of thousands of objects the imports made (measured: p99 of usage charges at 32 clients
    from about 60-90 ms to about 21 ms, docs/BENCHMARKS.md)."""
    tracing.setup(services)  # before the app: it instruments itself if tracing is on
    app = create_app(services)
    gc.collect()
    gc.freeze()
    return app


def admin_key(settings: Settings) -> str:
    """BILLFOLD_ADMIN_KEY, or the key `billfold serve` generated into var/admin_key; never a
    new one (each process would make its own)."""
    if settings.admin_key:
        return settings.admin_key
    path = settings.var_dir / "admin_key"
    if path.exists():
        return path.read_text().strip()
    raise RuntimeError(
        f"No admin key: set BILLFOLD_ADMIN_KEY, or run `billfold serve` once to generate {path}."
    )

"""The `billfold` command: serve, migrate."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console

from billfold.config import Settings, get_settings

app = typer.Typer(help="Billfold: billing, wallet and subscriptions for AI-agent platforms.")
console = Console()


@dataclass(frozen=True)
class AdminKey:
    key: str
    source: str
    generated: bool = False

    def display(self) -> str:
        """What `serve` prints: the key itself only the once it was generated; after that a
        fingerprint, so logs of later starts do not carry the operator's credential."""
        if self.generated:
            return f"{self.key}   (generated now into {self.source}; shown only this once)"
        return f"{admin_key_fingerprint(self.key)}   (from {self.source})"


def admin_key_fingerprint(key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{key[:6]}… sha256:{digest}"


def resolve_admin_key(settings: Settings) -> AdminKey:
    """The operator key and where it came from: the environment, or var/admin_key."""
    if settings.admin_key:
        return AdminKey(settings.admin_key, "BILLFOLD_ADMIN_KEY")
    path = settings.var_dir / "admin_key"
    if path.exists():
        return AdminKey(path.read_text().strip(), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = f"bf_admin_{secrets.token_urlsafe(32)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return AdminKey(key, str(path), generated=True)


@app.command()
def migrate() -> None:
    """Upgrade the database schema to the latest version."""
    from billfold.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    console.print(f"[green]Schema is up to date[/green] on {_safe_url(settings.database_url)}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    demo: Annotated[
        bool | None,
        typer.Option("--demo/--no-demo", help="Seed the demo account (default: on for SQLite)"),
    ] = None,
    run_migrations: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Upgrade the schema first")
    ] = True,
    worker: Annotated[
        bool,
        typer.Option("--worker/--no-worker", help="Run a job worker in this process too"),
    ] = True,
) -> None:
    """Run the API (with the hosted sandbox pages) on HOST:PORT."""
    import uvicorn

    from billfold.api.app import create_app
    from billfold.application.container import build_services
    from billfold.migrate import upgrade

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    if (
        not settings.public_url
        or settings.public_url == Settings.model_fields["public_url"].default
    ):
        settings = settings.model_copy(update={"public_url": f"http://{host}:{port}"})
    if run_migrations:
        upgrade(settings.database_url)
    admin_key = resolve_admin_key(settings)
    services = build_services(settings, admin_key.key)
    if demo is None:
        demo = services.database.is_sqlite
    lines = [
        ("URL", settings.public_url),
        ("Database", _safe_url(settings.database_url)),
        ("Processor", settings.processor),
        ("Admin key", admin_key.display()),
    ]
    if demo:
        from billfold.demo import seed

        access = seed(services)
        lines += [
            ("Demo login", f"{access.email} / {access.password}"),
            ("Demo agent token", access.token),
        ]
    lines.append(("API docs", f"{settings.public_url}/docs"))
    console.rule("[bold]Billfold")
    for label, value in lines:
        console.print(f"[bold]{label + ':':<18}[/bold]{value}", soft_wrap=True, highlight=False)
    console.rule()
    if worker:
        from billfold.application.jobs import start_in_thread

        start_in_thread(services)
    uvicorn.run(
        create_app(services),
        host=host,
        port=port,
        log_level="info",
        # Client addresses (login throttling, abuse limits) come from the connection
        # unless the operator names the proxy whose X-Forwarded-For is to be believed.
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


@app.command("worker")
def run_worker(
    once: Annotated[bool, typer.Option(help="Run the jobs due now, then exit")] = False,
) -> None:
    """Run background jobs (top-ups, expiries, …); run as many as you like beside the API."""
    import signal
    import threading

    from billfold.application.container import build_services
    from billfold.application.jobs import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    job_runner = Worker(build_services(settings, resolve_admin_key(settings).key))
    if once:
        console.print(f"Ran {job_runner.drain()} job(s).")
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    job_runner.run_forever(stop)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:  # pragma: no cover - console entry point
    app()


# The agent's and operator's verbs, the demo and the MCP server (modules of their own).
def _register_commands() -> None:
    from billfold.cli import agent, demo, mcp, operator

    for module in (agent, operator, demo, mcp):
        module.register(app)


_register_commands()

if __name__ == "__main__":  # pragma: no cover - `python -m billfold.cli.main`
    main()

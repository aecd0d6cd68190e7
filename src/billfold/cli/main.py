"""The `billfold` command: serve, worker, migrate, backup, check-ledger (and the client
verbs registered from billfold.cli.agent and billfold.cli.operator)."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from billfold import logs, tracing
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
def backup(
    path: Annotated[Path, typer.Argument(help="Where to write the copy")],
    force: Annotated[bool, typer.Option("--force", help="Replace PATH if it exists")] = False,
) -> None:
    """Back up the SQLite database to PATH, online: one consistent snapshot taken while
    the server keeps running (SQLite's backup API). PostgreSQL: use pg_dump or
    point-in-time recovery (docs/OPERATIONS.md)."""
    from sqlalchemy.engine import make_url

    from billfold.db import backup_sqlite

    settings = get_settings()
    if make_url(settings.database_url).get_backend_name() != "sqlite":
        console.print(
            "[red]billfold backup copies the SQLite default.[/red] For PostgreSQL use "
            "pg_dump or point-in-time recovery: see docs/OPERATIONS.md."
        )
        raise typer.Exit(2)
    if path.exists() and not force:
        console.print(f"[red]{path} exists[/red] (--force to replace it)")
        raise typer.Exit(2)
    size = backup_sqlite(settings.database_url, path)
    console.print(f"[green]Backed up[/green] {_safe_url(settings.database_url)} to {path}")
    console.print(
        f"{size:,} bytes; check it with BILLFOLD_DATABASE_URL=sqlite:///{path} "
        "billfold check-ledger"
    )


@app.command("check-ledger")
def check_ledger(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Check the whole ledger (after a restore or an incident): every wallet against its
    postings, every transaction balanced, every account's held money against its active
    holds. Exit status 1 if anything is off."""
    from billfold.application.container import build_services
    from billfold.application.usecases.wallet import audit_ledger

    # No statement timeout: reading a large ledger may take longer than a request may.
    settings = get_settings().model_copy(update={"db_statement_timeout_ms": 0})
    services = build_services(settings, settings.admin_key or secrets.token_urlsafe(16))
    report = audit_ledger(services)
    if as_json:
        typer.echo(report.model_dump_json())
    else:
        state = "[green]consistent[/green]" if report.consistent else "[red]INCONSISTENT[/red]"
        console.print(f"Ledger of {report.accounts} account(s): {state}")
        for problem in report.problems:
            where = problem.account_id or problem.transaction_id
            console.print(f"  {where}: {problem.problem}", highlight=False)
    if not report.consistent:
        raise typer.Exit(1)


SQLITE_API_PROCESSES = 2  # serve's default on SQLite, at most (see serve)


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
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="API server processes (default: the number of CPU cores; at most 2 on SQLite)",
        ),
    ] = None,
    job_workers: Annotated[
        int, typer.Option("--job-workers", min=0, help="Job worker processes beside the API")
    ] = 1,
    worker: Annotated[
        bool,
        typer.Option("--worker/--no-worker", help="Run job worker processes (--job-workers)"),
    ] = True,
) -> None:
    """Run the API (with the hosted sandbox pages) on HOST:PORT, and the job workers.

    One API process serves in this process itself; more are started (and restarted)
    by uvicorn's supervisor. Job workers are processes of their own (`billfold worker`).
    Migrations, the admin key and the demo account are done here, once, before any
    process starts; the processes share only the database.
    """
    import signal

    import uvicorn

    from billfold.api.http_protocol import CoalescingHttpToolsProtocol
    from billfold.application.container import build_services
    from billfold.cli.supervise import JobWorkers
    from billfold.migrate import upgrade

    job_processes = job_workers if worker else 0
    settings = get_settings()
    logs.configure(settings.log_format)
    if (
        not settings.public_url
        or settings.public_url == Settings.model_fields["public_url"].default
    ):
        settings = settings.model_copy(update={"public_url": f"http://{host}:{port}"})
    if run_migrations:
        upgrade(settings.database_url)
    admin_key = resolve_admin_key(settings)
    # Every process this one starts reads its settings from the environment: the same
    # public URL, and the one admin key (never a key of its own).
    os.environ["BILLFOLD_PUBLIC_URL"] = settings.public_url
    os.environ["BILLFOLD_ADMIN_KEY"] = admin_key.key
    services = build_services(settings, admin_key.key)
    # As many API processes as cores; on SQLite two at most. Its writers take turns at
    # the database's writer gate (db._GatedConnection), so a second process adds a core
    # for everything around the writes; more only split the clients' charges into
    # smaller batches that queue for the one writer. Measured at 8 clients on 2 cores:
    # 1 process 1,020-1,250 charges/s, 2 processes 1,200-1,520/s (p99 14-17 ms),
    # 4 processes 700/s; before the gate, SQLite's sleeping busy handler gave 2 processes
    # about 800-950/s with a p99 of 0.5-1 s.
    cores = os.cpu_count() or 1
    api_processes = workers or (
        min(cores, SQLITE_API_PROCESSES) if services.database.is_sqlite else cores
    )
    if demo is None:
        demo = services.database.is_sqlite
    lines = [
        ("URL", settings.public_url),
        ("Database", _safe_url(settings.database_url)),
        ("Processor", settings.processor),
        ("Admin key", admin_key.display()),
        ("Processes", f"{api_processes} API, {job_processes} job worker(s)"),
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

    metrics_dir: str | None = None
    if api_processes > 1:
        services.database.dispose()  # the API processes open their own
        # Each API process writes its metric samples here; a scrape adds them up. Fresh
        # for every start: samples left from a previous run would count again.
        metrics_dir = tempfile.mkdtemp(prefix="billfold-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # SIGTERM unwinds like Ctrl-C, through the `finally` that stops the job workers
    # (uvicorn re-raises the signal it caught once it has shut down).
    signal.signal(signal.SIGTERM, _interrupt)
    from billfold.application.jobs import release_leases_of

    job_runners = JobWorkers(
        job_processes,
        grace_seconds=settings.shutdown_grace_seconds,
        on_killed=lambda pid: release_leases_of(services, pid),
    )
    server_options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "info",
        # BILLFOLD_LOG_FORMAT=json: billfold's own line per request replaces uvicorn's.
        "access_log": settings.access_log and settings.log_format != "json",
        "log_config": None,  # uvicorn logs through the root logger (billfold.logs)
        "http": CoalescingHttpToolsProtocol,  # a response's head and body in one write
        # SIGTERM: stop accepting, let the requests in flight finish (up to the grace).
        "timeout_graceful_shutdown": int(settings.shutdown_grace_seconds),
        # Client addresses (login throttling, abuse limits) come from the connection
        # unless the operator names the proxy whose X-Forwarded-For is to be believed.
        "proxy_headers": settings.forwarded_allow_ips is not None,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }
    try:
        job_runners.start()
        if api_processes == 1:
            from billfold.api.factory import serving_app

            uvicorn.run(serving_app(services), **server_options)
        else:
            uvicorn.run(
                "billfold.api.factory:create_app_from_env",
                factory=True,
                workers=api_processes,
                **server_options,
            )
    except KeyboardInterrupt:
        pass
    finally:
        job_runners.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@app.command("worker")
def run_worker(
    once: Annotated[bool, typer.Option(help="Run the jobs due now, then exit")] = False,
    parent_pid: Annotated[
        int | None,
        typer.Option(hidden=True, help="Stop when this process (serve) is gone"),
    ] = None,
) -> None:
    """Run background jobs (top-ups, expiries, …); run as many as you like beside the API."""
    import signal

    from billfold.application.container import build_services
    from billfold.application.jobs import Worker

    # No statement timeout in a worker: it answers no client, and its housekeeping (the
    # purge of expired keys, say) may take longer than a request may.
    settings = get_settings().model_copy(update={"db_statement_timeout_ms": 0})
    logs.configure(settings.log_format)
    services = build_services(settings, resolve_admin_key(settings).key)
    tracing.setup(services)
    job_runner = Worker(services)
    if once:
        console.print(f"Ran {job_runner.drain()} job(s).")
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if parent_pid is not None:
        threading.Thread(
            target=_stop_when_orphaned, args=(parent_pid, stop), daemon=True, name="parent"
        ).start()
    job_runner.run_forever(stop)


def _stop_when_orphaned(parent_pid: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:
            logging.getLogger("billfold.worker").warning("serve is gone: stopping")
            stop.set()


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

"""Operator configuration, read from the environment (``BILLFOLD_*``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SQLITE_PATH = Path("var") / "billfold.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLFOLD_", extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_SQLITE_PATH}",
        description="SQLAlchemy URL: a SQLite file (default) or postgresql+psycopg://…",
    )
    admin_key: str | None = Field(
        default=None,
        description="Bearer key of the operator API; generated into var/admin_key if unset.",
    )
    # During a rotation of the admin key: the key before it, still valid until removed.
    admin_key_previous: str | None = None
    processor: Literal["sandbox", "stripe"] = "sandbox"
    # Stripe (processor=stripe): the account's keys and the signing secret of the webhook
    # endpoint (/webhooks/stripe). `stripe_api_base` points the SDK at another server (a
    # test server); `stripe_public_api_base` is where clients tokenize cards, as
    # /billing/stripe-config tells them (Stripe's own API unless testing).
    stripe_secret_key: str | None = None
    stripe_publishable_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    stripe_public_api_base: str = "https://api.stripe.com"
    stripe_timeout_seconds: float = Field(default=30.0, gt=0, le=120)
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Base URL clients reach this server at (used in links it hands out).",
    )
    currency: str = "USD"
    sandbox_publishable_key: str = "pk_test_billfold_sandbox"
    var_dir: Path = Path("var")

    # Login throttling (see the README): failed attempts allowed per window for one email
    # from one client address, for one email from all addresses, and for one address.
    login_max_failures_per_email_client: int = 10
    login_max_failures_per_email: int = 100
    login_max_failures_per_client: int = 50
    login_window_seconds: int = 900
    # Abuse limits of the hosted payment page and the sandbox's card tokenization.
    pay_max_attempts_per_session: int = 10
    pay_session_window_seconds: int = 600
    pay_max_attempts_per_client: int = 60
    tokenize_max_per_client: int = 60
    client_window_seconds: int = 60
    # Client addresses come from the connection. Behind a reverse proxy, set this to the
    # proxy's address(es) ("10.0.0.5", "*") to take the client from X-Forwarded-For;
    # unset, that header is ignored (anyone could write it).
    forwarded_allow_ips: str | None = None

    payment_link_ttl_minutes: int = 60
    # Webhook URLs resolving to loopback/private/link-local addresses are refused unless
    # this is set (for local development and tests).
    webhook_allow_private: bool = False
    # Worker threads per process: money jobs (top-ups, renewals, dunning, expiries) and,
    # apart from them, webhook deliveries (at most 2 at a time to any one endpoint).
    job_threads: int = Field(default=2, ge=1, le=64)
    webhook_delivery_threads: int = Field(default=4, ge=1, le=64)
    idempotency_ttl_hours: int = 24
    # A key still "in progress" after this long is presumed abandoned (crashed worker)
    # and may be taken over by a retry; every effect under it is itself idempotent.
    idempotency_lock_timeout_seconds: int = 60
    # Usage charges arriving together share one transaction (application/charging.py);
    # false writes each in its request's own transaction.
    usage_group_commit: bool = True
    # Threads of the committer for synchronous callers on PostgreSQL (SQLite: one). The
    # HTTP API commits on its event loop instead, one committer task per API process.
    # One measured best for a hot wallet (bigger batches, one lock holder at a time).
    usage_committers: int = Field(default=1, ge=1, le=16)
    # Well-formed usage charges answered by a pure ASGI middleware, without the router
    # (`billfold.api.fastpath`); off, the route answers every charge.
    usage_fast_path: bool = True
    # One access log line per request from the HTTP server (`billfold serve`). At thousands
    # of usage charges a second the line costs about a tenth of the API's CPU; a proxy in
    # front may log requests instead (docs/BENCHMARKS.md).
    access_log: bool = True
    # Log lines: `text` for a terminal, `json` (one object per line, one line per request
    # and per job, with request id, account, route, status and duration) for a pipeline.
    # Either way secrets are redacted (billfold.logs). With `json` the request lines
    # replace uvicorn's access log.
    log_format: Literal["text", "json"] = "text"
    # OpenTelemetry traces over OTLP/HTTP (needs the `otel` extra; the exporter reads the
    # standard OTEL_EXPORTER_OTLP_ENDPOINT and friends). billfold.tracing.
    tracing: Literal["off", "otlp"] = "off"
    # SIGTERM to `billfold serve`: it stops accepting connections, lets requests in flight
    # finish and job workers finish their jobs for up to this long, then stops them (a
    # killed worker's jobs are handed back, for another worker to take at once).
    shutdown_grace_seconds: float = Field(default=30.0, gt=0, le=3600)

    # Dunning: after a renewal's payment fails, retry this many days after the renewal;
    # after the last retry fails the subscription becomes `canceled` (or `unpaid`).
    dunning_retry_days: list[int] = Field(default=[1, 3, 5])
    dunning_final_status: Literal["canceled", "unpaid"] = "canceled"

    # GET /metrics (Prometheus) asks for the admin key as a Bearer token unless this is
    # set: for a scraper on a private network that cannot send one.
    metrics_public: bool = False

    db_pool_size: int = 20
    db_max_overflow: int = 20
    # PostgreSQL outages are answered 503 service_unavailable with Retry-After, quickly:
    # a connection attempt gives up after db_connect_timeout_seconds (a stopped server
    # refuses at once), a statement of an API process after db_statement_timeout_ms (0:
    # no limit; job workers and the CLI's maintenance commands run without one), a wait
    # for a pooled connection after db_pool_timeout_seconds.
    db_connect_timeout_seconds: int = Field(default=2, ge=1, le=60)
    # (Not 2 s: sixteen concurrent card fundings on a slow processor queue longer than that
    # for the invoice number series, and a timeout then answers 503 for a charge made.)
    db_statement_timeout_ms: int = Field(default=10_000, ge=0)
    db_pool_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    # What a 503 service_unavailable asks the client to wait (Retry-After, seconds).
    retry_after_seconds: int = Field(default=1, ge=1, le=300)

    @model_validator(mode="after")
    def _stripe_keys_given(self) -> Settings:
        if self.processor == "stripe" and not (
            self.stripe_secret_key and self.stripe_publishable_key
        ):
            raise ValueError(
                "BILLFOLD_PROCESSOR=stripe needs BILLFOLD_STRIPE_SECRET_KEY and "
                "BILLFOLD_STRIPE_PUBLISHABLE_KEY (and BILLFOLD_STRIPE_WEBHOOK_SECRET for "
                "/webhooks/stripe)."
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()

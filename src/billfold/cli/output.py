"""How the CLI answers: Rich for people, `--json` (the raw `data`) for scripts, and exit
codes that tell the failures apart.

Exit codes: 0 ok, 2 usage (Typer's), 3 declined (a declined card, or one that needs
authentication), 4 insufficient funds, 5 authentication (no, bad or revoked token,
forbidden), 6 not found, 7 checkout not completed or expired, 1 anything else. An error
prints its code and message (and the card's decline_code) to stderr; with --json the
error is also printed to stderr as one JSON object.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from billfold import jsonenc
from billfold.cli.config import ConfigError

console = Console()
err_console = Console(stderr=True)

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_DECLINED = 3
EXIT_INSUFFICIENT_FUNDS = 4
EXIT_AUTH = 5
EXIT_NOT_FOUND = 6
EXIT_CHECKOUT = 7

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the raw JSON `data` (for scripts)")]

_DECLINE_CODES = {"payment_declined", "card_declined", "authentication_required"}
_CHECKOUT_CODES = {"checkout_not_completed", "checkout_expired"}
_AUTH_CODES = {
    "unauthenticated",
    "forbidden",
    "invalid_credentials",
    "token_revoked",
    "token_expired",
    "account_suspended",
}
_BY_CLASS = (
    ({"PaymentDeclined", "AuthenticationRequired", "CardDeclined"}, EXIT_DECLINED),
    ({"InsufficientFunds"}, EXIT_INSUFFICIENT_FUNDS),
    ({"Unauthenticated", "Forbidden", "PermissionDenied"}, EXIT_AUTH),
    ({"NotFound"}, EXIT_NOT_FOUND),
    ({"CheckoutNotCompleted", "CheckoutExpired"}, EXIT_CHECKOUT),
)


def exit_code_for(exc: BaseException) -> int:
    """The exit code of an SDK error: by its class, else its code, else its HTTP status."""
    names = {klass.__name__ for klass in type(exc).__mro__}
    for classes, exit_code in _BY_CLASS:
        if names & classes:
            return exit_code
    code = str(getattr(exc, "code", "") or "")
    status = getattr(exc, "status", None)
    if code in _DECLINE_CODES:
        return EXIT_DECLINED
    if code == "insufficient_funds":
        return EXIT_INSUFFICIENT_FUNDS
    if code in _AUTH_CODES or status in (401, 403):
        return EXIT_AUTH
    if code in _CHECKOUT_CODES:
        return EXIT_CHECKOUT
    if code == "not_found" or code.endswith("_not_found") or status == 404:
        return EXIT_NOT_FOUND
    return EXIT_OTHER


def fail(message: str, code: str = "error", exit_code: int = EXIT_OTHER) -> NoReturn:
    err_console.print(f"[bold red]Error[/bold red] {code}: {message}", highlight=False)
    raise typer.Exit(exit_code)


def _report(exc: BaseException) -> int:
    from billfold.client.errors import BillfoldError

    exit_code = exit_code_for(exc)
    if isinstance(exc, BillfoldError):
        code = str(getattr(exc, "code", None) or "error")
        message = str(getattr(exc, "message", None) or exc)
        details = getattr(exc, "details", None) or {}
        decline = getattr(exc, "decline_code", None) or (
            details.get("decline_code") if isinstance(details, Mapping) else None
        )
        line = f"[bold red]Error[/bold red] {code}: {message}"
        if decline:
            line += f" (decline_code: {decline})"
        err_console.print(line, highlight=False, soft_wrap=True)
        payment_url = details.get("payment_url") if isinstance(details, Mapping) else None
        if payment_url:
            err_console.print(f"A person can complete it at: {payment_url}", highlight=False)
        return exit_code
    if isinstance(exc, ConfigError):
        err_console.print(f"[bold red]Error[/bold red] not_configured: {exc}", highlight=False)
        return EXIT_AUTH
    import httpx

    if isinstance(exc, httpx.HTTPError):
        err_console.print(
            f"[bold red]Error[/bold red] connection_error: {exc}", highlight=False, soft_wrap=True
        )
        return EXIT_OTHER
    raise exc


P = ParamSpec("P")
R = TypeVar("R")


def handled(func: Callable[P, R]) -> Callable[P, R]:
    """Turn SDK and configuration errors into a message on stderr and the exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise typer.Exit(_report(exc)) from exc

    return wrapper


def to_data(result: Any) -> Any:
    """An SDK result as plain JSON-able data (Decimals kept exact)."""
    if isinstance(result, BaseModel):
        return to_data(result.model_dump())
    if isinstance(result, Mapping):
        return {str(k): to_data(v) for k, v in result.items()}
    if isinstance(result, list | tuple):
        return [to_data(v) for v in result]
    return result


def print_json(data: Any) -> None:
    # Plain print: Rich would wrap long lines and colour the JSON.
    print(jsonenc.dumps(to_data(data)))


def emit(result: Any, as_json: bool, render: Callable[[Any], None] | None = None) -> None:
    """The result: raw JSON with --json, else `render(data)` (a key/value table by default)."""
    data = to_data(result)
    if as_json:
        print_json(data)
        return
    (render or show_mapping)(data)


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal | float | int):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value) if value else "—"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items() if v is not None) or "—"
    text = str(value)
    return text.replace("+00:00", "Z") if "T" in text and text[:4].isdigit() else text


def money(value: Any, currency: Any = None) -> str:
    if value is None:
        return "—"
    return f"{value} {currency}" if currency else f"${value}"


def show_mapping(data: Any, title: str | None = None) -> None:
    if not isinstance(data, Mapping):
        console.print(fmt(data))
        return
    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in data.items():
        table.add_row(str(key), fmt(value))
    console.print(table)


def show_rows(
    rows: Iterable[Mapping[str, Any]],
    columns: Iterable[tuple[str, str]],
    title: str | None = None,
    empty: str = "Nothing yet.",
) -> None:
    """A table of `rows` with (header, key) columns; a dotted key reads a nested value."""
    items = list(rows)
    cols = list(columns)
    if not items:
        console.print(f"[dim]{empty}[/dim]")
        return
    table = Table(title=title)
    for header, _ in cols:
        table.add_column(header, overflow="fold")
    for item in items:
        table.add_row(*(fmt(dig(item, key)) for _, key in cols))
    console.print(table)


def dig(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, Mapping):
            return None
        data = data.get(part)
    return data


def ok(message: str) -> None:
    console.print(f"[green]✓[/green] {message}", highlight=False, soft_wrap=True)

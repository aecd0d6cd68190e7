"""Logging: text for a terminal, or one JSON object per line for a log pipeline, and no
secret in either.

`configure(format)` sets up the root logger (BILLFOLD_LOG_FORMAT: `text` or `json`). Every
line, whatever its logger (uvicorn's and SQLAlchemy's included), goes through `redact`:
admin, operator, agent and processor keys, webhook secrets, Bearer credentials, card
numbers (digit runs that pass the Luhn check), passwords and the signatures of signed
links are replaced before the line is written.

A JSON line has `time`, `level`, `logger` and `message`, and the fields a record carries
in `extra` (`request_id`, `account_id`, `method`, `route`, `status`, `duration_ms`,
`replayed`, `job_id`, `job_kind`, `attempt`, `outcome`); an exception adds `exception`.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

FIELDS = (
    "request_id",
    "account_id",
    "method",
    "route",
    "status",
    "duration_ms",
    "replayed",
    "error_code",
    "job_id",
    "job_kind",
    "attempt",
    "outcome",
)

_SECRET = re.compile(
    r"\b(?:bf_admin|bf_at|bfo|whsec|sk_live|sk_test|rk_live|rk_test)_[A-Za-z0-9_\-]{4,}"
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+")
_QUERY_SECRET = re.compile(r"(?i)\b(signature|token|password|secret|api_key)=[^&\s\"']+")
_JSON_SECRET = re.compile(
    r"(?i)([\"'](?:password|new_password|token|secret|key|card_number|number|cvc)[\"']"
    r"\s*:\s*)[\"'][^\"']*[\"']"
)
_DIGITS = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return "[card]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


# What each pattern cannot match without (in ASCII text, lower-cased where the pattern
# ignores case): a line holding none of it skips that pattern's scan. Every request's
# access line is redacted, and a scan costs several microseconds.
_SECRET_PREFIXES = (
    *("bf_admin_", "bf_at_", "bfo_", "whsec_"),
    *("sk_live_", "sk_test_", "rk_live_", "rk_test_"),
)
_QUERY_WORDS = ("signature=", "token=", "password=", "secret=", "api_key=")
_JSON_WORDS = ("password", "token", "secret", "key", "number", "cvc")


def redact(text: str) -> str:
    """`text` with every secret it may carry replaced."""
    if not text.isascii():  # (?i) also folds some non-ASCII letters: scan everything
        return redact_all(text)
    if any(prefix in text for prefix in _SECRET_PREFIXES):
        text = _SECRET.sub("[secret]", text)
    lowered = text.lower()
    if "bearer" in lowered:
        text = _BEARER.sub(r"\1 [secret]", text)
        lowered = text.lower()
    if any(word in lowered for word in _QUERY_WORDS):
        text = _QUERY_SECRET.sub(r"\1=[secret]", text)
        lowered = text.lower()
    if ":" in text and any(word in lowered for word in _JSON_WORDS):
        text = _JSON_SECRET.sub(r'\1"[secret]"', text)
    return _DIGITS.sub(_card, text)


def redact_all(text: str) -> str:
    """`redact` by every pattern, with no shortcut (what `redact` must equal)."""
    text = _SECRET.sub("[secret]", text)
    text = _BEARER.sub(r"\1 [secret]", text)
    text = _QUERY_SECRET.sub(r"\1=[secret]", text)
    text = _JSON_SECRET.sub(r'\1"[secret]"', text)
    return _DIGITS.sub(_card, text)


class RedactingFormatter(logging.Formatter):
    """The usual text line, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        # Redacted before encoding: the patterns see the text as written, not JSON-escaped,
        # and what replaces a secret is escaped with the rest.
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return RedactingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")


def configure(log_format: str = "text", level: int = logging.INFO) -> None:
    """The root logger writes to stderr in `log_format`; uvicorn's loggers go through it
    too (serve hands uvicorn `log_config=None`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # No line says where in the code, or in which process or thread, it was logged: the
    # logging HOWTO's optimizations, which spare every record (an access line per request)
    # a walk up the stack and a getpid call.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


__all__ = [
    "FIELDS",
    "JsonFormatter",
    "RedactingFormatter",
    "configure",
    "formatter",
    "redact",
    "redact_all",
]

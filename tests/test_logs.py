"""Logs: no secret in any line (the redaction, and a whole test run's logs scanned: see
tests/conftest.py), and with BILLFOLD_LOG_FORMAT=json one JSON line per request and per
job with the fields an operator searches by."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billfold.logs import redact, redact_all
from tests.test_serve import serving


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Authorization: Bearer bf_at_abcdefghijklmnop", "Authorization: Bearer [secret]"),
        ("key bf_admin_Zx9-_a1b2c3 used", "key [secret] used"),
        ("operator bfo_0123456789abcdef", "operator [secret]"),
        ("stripe sk_test_51Habc and whsec_abcdef1234", "stripe [secret] and [secret]"),
        ("/pdf?expires=99&signature=abc123", "/pdf?expires=99&signature=[secret]"),
        ('{"email": "a@b.c", "password": "hunter2"}', '{"email": "a@b.c", "password": "[secret]"}'),
        ("card 4242 4242 4242 4242 declined", "card [card] declined"),
        ("card 4000000000000002", "card [card]"),
    ],
)  # fmt: skip
def test_redact_replaces_every_kind_of_secret(text: str, kept: str) -> None:
    assert redact(text) == kept


def test_redact_leaves_ordinary_numbers_and_ids_alone() -> None:
    plain = (
        "charged 1000000000000 micros (13 digits, not a card: fails Luhn 1234567812345678) "
        "to acct_4242 txn_abc req_xyz at 2026-12-06T11:00:00Z"
    )
    assert redact(plain) == plain


# Pieces of every secret's shape (and of lookalikes), in both cases, glued by separators:
# lines where the shortcuts of `redact` skip a pattern, and lines where they must not.
_PIECES = [
    "bf_admin_", "bf_at_", "bfo_", "whsec_", "sk_live_", "sk_test_", "rk_live_", "rk_test_",
    "abcd1234", "Bearer", "bearer", "BEARER", "token", "Token", "secret", "SECRET",
    "password", "new_password", "api_key", "signature", "key", "number", "card_number",
    "cvc", "=", ":", '"', "'", " ", "-", "&", "?", ",", ";", "4242", "4000", "0000", "0002",
    "1234", "5678", "[secret]", "\u017f", "\u212a", "\u00e9", "/api/admin/v1/usage-holds",
]  # fmt: skip


@settings(max_examples=2000)
@given(st.lists(st.sampled_from(_PIECES), max_size=10).map("".join))
def test_redact_equals_every_pattern_applied(text: str) -> None:
    assert redact(text) == redact_all(text)


@pytest.mark.parametrize(
    "text",
    [
        "GET /pdf?api_key=abc&x=1", "GET /a?Signature=abc", "TOKEN=abc", "password=x",
        'x {"card_number": "4242"}', "{'Key' : 'v'}", '{"CVC":"123"}', "bearer abc",
        "Authorization: BEARER abc", "rk_live_abcd", "whsec_abcd", "bf_at_abcd=1",
        '{"password": "bf_admin_abcd"}',
    ],
)  # fmt: skip
def test_redact_takes_no_shortcut_past_a_secret(text: str) -> None:
    assert redact(text) == redact_all(text) != text


def test_redact_folds_case_as_the_patterns_do() -> None:
    # Non-ASCII text takes every pattern: (?i) matches the long s with an s.
    long_s = "\u017fecret=abc"
    assert redact(long_s) == redact_all(long_s) == "\u017fecret=[secret]"
    assert redact('{"TOKEN": "abc"}') == '{"TOKEN": "[secret]"}'


def _json_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_json_logs_have_a_line_per_request_and_per_job(tmp_path: Path) -> None:
    json_logs = {"BILLFOLD_LOG_FORMAT": "json"}
    with serving(tmp_path, "--job-workers", "1", env_extra=json_logs) as served:
        api = served.api
        agent = api.new_agent()
        assert agent.fund(10).status_code == 200
        key = f"log-{uuid.uuid4()}"
        for _ in range(2):  # a charge, then its replay
            charged = api.charge_usage(agent.account_id, "1", key=key)
            assert charged.status_code == 201, charged.text
        refused = api.charge_usage(agent.account_id, "100")
        assert refused.status_code == 402
        held = api.admin_post(
            "/usage-holds",
            {"account_id": agent.account_id, "amount": "1", "usecase": "llm", "ttl_seconds": 1},
        )
        assert held.status_code == 201
        assert agent.get("/wallet/balance").status_code == 200
        deadline = time.monotonic() + 30  # the sweep of expired holds runs in the worker
        while time.monotonic() < deadline:
            if any(
                line.get("job_kind") == "wallet.sweep_usage_holds"
                for line in _json_lines(served.log)
            ):
                break
            time.sleep(0.5)
        text = served.log.read_text()
        token = agent.token
    lines = _json_lines(served.log)
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    requests_logged = [line for line in lines if line["logger"] == "billfold.request"]
    charges = [line for line in requests_logged if line["route"] == "/api/admin/v1/usage-charges"]
    assert [(line["status"], line["replayed"]) for line in charges] == [
        (201, False),
        (201, True),
        (402, False),
    ]
    assert all(line["account_id"] == agent.account_id for line in charges)
    assert all(
        line["request_id"].startswith("req_") and line["duration_ms"] > 0 for line in charges
    )
    assert charges[2]["error_code"] == "insufficient_funds"
    balance = [line for line in requests_logged if line["route"] == "/api/agents/v1/wallet/balance"]
    assert balance and balance[0]["account_id"] == agent.account_id
    jobs = [line for line in lines if line.get("job_kind") == "wallet.sweep_usage_holds"]
    assert jobs and jobs[0]["outcome"] == "succeeded" and jobs[0]["attempt"] == 1
    assert jobs[0]["job_id"] and jobs[0]["duration_ms"] >= 0
    assert "account_id" not in jobs[0]  # the sweep is of every account's holds: none named
    # No uvicorn access lines beside billfold's own, and no secret in any log line (the
    # banner printed the generated admin key, on purpose, this one time).
    assert '"GET /api/agents/v1/wallet/balance HTTP/1.1"' not in text
    logged = json.dumps(lines)
    assert api.admin_key not in logged and token not in logged


def test_a_json_line_is_valid_json_with_its_secrets_redacted() -> None:
    import logging

    from billfold.logs import JsonFormatter

    record = logging.LogRecord(
        "billfold.test",
        logging.WARNING,
        __file__,
        1,
        'body: {"password": "hunter2"}, header: "Bearer abc", link ?token=abc" and %s',
        ("{'password': 'x'}",),
        None,
    )
    record.route = "/pdf?signature=abc"
    line = JsonFormatter().format(record)
    parsed = json.loads(line)  # still JSON
    assert "hunter2" not in line and "abc" not in line and "'x'" not in line
    assert '"password": "[secret]"' in parsed["message"]
    assert parsed["route"] == "/pdf?signature=[secret]"

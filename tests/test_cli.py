"""The `billfold` CLI end to end, as a subprocess against the live test server: every verb
once, `--json` parses, the exit codes tell failures apart, and `billfold demo` completes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CARD_DECLINED, Api

BILLFOLD = [sys.executable, "-m", "billfold.cli"]
PROCESSORS = ("sandbox", "stripe")


class Cli:
    def __init__(self, api: Api, config_dir: Path) -> None:
        self.api = api
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")},
            "BILLFOLD_CONFIG_DIR": str(config_dir),
            "BILLFOLD_ADMIN_KEY": api.admin_key,
            "COLUMNS": "200",
        }

    def run(self, *args: str, code: int = 0, env: dict[str, str] | None = None) -> Any:
        done = subprocess.run(
            [*BILLFOLD, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture
def cli(api: Api, tmp_path: Path) -> Cli:
    return Cli(api, tmp_path / "config")


def test_login_stores_the_token_0600(cli: Cli, api: Api, tmp_path: Path) -> None:
    agent = api.new_agent()
    cli.run("login", "--url", api.base_url, "--token", agent.token)
    path = tmp_path / "config" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {
        "url": api.base_url,
        "token": agent.token,
        "admin_key": api.admin_key,
    }
    assert cli.json("wallet", "balance")["balance"] == 0
    cli.run("logout")
    assert not path.exists()
    # email + password login
    cli.run("login", "--url", api.base_url, "--email", agent.email, "--password", agent.password)
    assert cli.json("wallet", "balance")["currency"] == "USD"


def test_agent_verbs(cli: Cli, api: Api) -> None:
    agent = api.new_agent()
    cli.run("login", "--url", api.base_url, "--token", agent.token)
    pm = api.tokenize("4242424242424242")
    assert cli.json("cards", "add", pm)["id"] == pm
    assert cli.json("cards", "list")["default_payment_method_id"] == pm
    second = cli.json("cards", "tokenize", "4242424242424242")["id"]
    cli.json("cards", "add", second, "--no-default")
    cli.json("cards", "default", second)
    cli.json("cards", "remove", second)
    funded = cli.json("wallet", "fund", "25", "--card", pm, "--key", f"k-{uuid.uuid4()}")
    assert funded["balance"] == 25
    cli.run("wallet", "balance")
    assert cli.json("wallet", "transactions")["total"] == 1
    cli.run("wallet", "transactions")
    assert cli.json("wallet", "withdraw", "5")["balance"] == 20
    cli.json("wallet", "auto-funding", "enable", "25", "5")
    cli.json("wallet", "auto-funding", "disable")
    code = f"C{uuid.uuid4().hex[:10].upper()}"
    assert cli.json("coupons", "create", code, "--kind", "credit", "--amount", "5")["code"] == code
    assert cli.json("coupons", "validate", code)["valid"] is True
    assert cli.json("coupons", "redeem", code)["balance"] == 25
    cli.json("billing", "info", "--set", "name=Acme Corp", "--set", "address_country=US")
    assert cli.json("billing", "info")["name"] == "Acme Corp"
    cli.run("billing", "overview")
    invoices = cli.json("invoices", "list")["items"]
    assert invoices
    cli.run("invoices", "list")
    assert cli.json("invoices", "show", invoices[0]["id"])["id"] == invoices[0]["id"]
    out = Path(cli.env["BILLFOLD_CONFIG_DIR"]).parent / "inv.pdf"
    cli.run("invoices", "pdf", invoices[0]["id"], "--out", str(out))
    assert out.read_bytes().startswith(b"%PDF")

    plan = cli.json("plans", "create", f"Plan {uuid.uuid4().hex[:6]}", "20", "month")
    dearer = cli.json("plans", "create", f"Plan {uuid.uuid4().hex[:6]}", "30", "month")
    ids = [p["id"] for p in cli.json("plans")["subscription_plans"]]
    assert plan["id"] in ids
    cli.run("plans")
    sub = cli.json("subscriptions", "create", str(plan["id"]), "--card", pm)
    assert sub["status"] == "active"
    assert cli.json("subscriptions", "list")["items"][0]["id"] == sub["id"]
    cli.run("subscriptions", "list")
    cli.run("subscriptions", "status", sub["id"])
    assert (
        cli.json("subscriptions", "change", sub["id"], str(dearer["id"]))["plan_id"] == dearer["id"]
    )
    assert cli.json("subscriptions", "pause", sub["id"])["status"] == "paused"
    assert cli.json("subscriptions", "resume", sub["id"])["status"] == "active"
    cli.json("subscriptions", "reset-cycle", sub["id"])
    cli.run("subscriptions", "fix-payment", sub["id"], code=1)  # nothing_to_fix: a 409
    assert cli.json("subscriptions", "cancel", sub["id"], "--now")["status"] == "canceled"


def test_pay_links(cli: Cli, api: Api) -> None:
    agent = api.new_agent()
    cli.run("login", "--url", api.base_url, "--token", agent.token)
    link = cli.json("pay-link", "fund", "12")
    assert link["session_id"].startswith("cs_")
    cli.run("pay-link", "confirm", link["session_id"], code=7)
    assert api.pay_link(link).status_code < 400
    assert cli.json("pay-link", "confirm", link["session_id"])["balance"] == 12

    # --wait: the link is printed first, then the CLI polls until the person paid.
    process = subprocess.Popen(
        [*BILLFOLD, "pay-link", "fund", "10", "--wait", "--interval", "0.3", "--max-wait", "60"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = ""
    deadline = time.monotonic() + 30
    while not url and time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("Payment link: "):
            url = line.removeprefix("Payment link: ").strip()
    assert url, "no link printed"
    assert api.pay_link({"payment_url": url}).status_code < 400
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, (out, err)
    assert cli.json("wallet", "balance")["balance"] == 22
    plans = cli.json("plans")["subscription_plans"]
    if plans:
        sub_link = cli.json("pay-link", "subscribe", str(plans[0]["id"]))
        cli.run("pay-link", "confirm", sub_link["session_id"], "--subscribe", code=7)


def test_exit_codes(cli: Cli, api: Api) -> None:
    agent = api.new_agent()
    cli.run("login", "--url", api.base_url, "--token", agent.token)
    declined = cli.run("wallet", "fund", "20", "--card", api.tokenize(CARD_DECLINED), code=3)
    assert "payment_declined" in declined.stderr
    assert "decline_code" in declined.stderr
    assert "insufficient_funds" in cli.run("wallet", "withdraw", "1000", code=4).stderr
    cli.run("invoices", "show", "in_doesnotexist", code=6)
    cli.run("wallet", "balance", code=5, env={"BILLFOLD_TOKEN": "bf_at_bogus"})
    cli.run(
        "usage",
        "charge",
        agent.account_id,
        "1",
        "tokens",
        code=5,
        env={"BILLFOLD_ADMIN_KEY": "nope"},
    )
    cli.run("wallet", "fund", "abc", code=2)


def test_operator_verbs(cli: Cli, api: Api) -> None:
    base = ["--url", api.base_url]
    email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
    account = cli.json(
        "accounts", "create", email, "--password", "a long password", "--token", *base
    )
    token = account["token"]["access_token"]
    assert cli.json("accounts", "token", account["id"], *base)["access_token"]
    listed = cli.json("accounts", "list", "--email", email, *base)
    assert [a["id"] for a in listed["items"]] == [account["id"]]
    assert email in cli.run("accounts", "list", "--limit", "5", *base).stdout
    cli.run("login", "--url", api.base_url, "--token", token)
    cli.json("wallet", "fund", "20", "--card", api.tokenize("4242424242424242"))
    charge = cli.json("usage", "charge", account["id"], "2.5", "tokens", "--key", "u1", *base)
    assert charge["balance_after"] == 17.5
    again = cli.json("usage", "charge", account["id"], "2.5", "tokens", "--key", "u1", *base)
    assert again["id"] == charge["id"]
    clock = cli.json("test-clock", "create", *base)
    moved = cli.json("test-clock", "advance", clock["id"], "--days", "2", *base)
    assert moved["advanced_seconds"] == 2 * 86_400


def test_usage_batch_from_a_file(cli: Cli, api: Api, tmp_path: Path) -> None:
    base = ["--url", api.base_url]
    agent = api.new_agent()
    assert agent.fund(10).status_code == 200
    run = uuid.uuid4().hex[:8]
    charges = [
        {"account_id": agent.account_id, "amount": "2.5", "usecase": "tokens"},
        {"account_id": agent.account_id, "amount": 1.25, "usecase": "images"},
        {"account_id": agent.account_id, "amount": "100", "usecase": "tokens"},
    ]
    lines = tmp_path / "charges.jsonl"
    lines.write_text(
        "\n".join(json.dumps({**c, "idempotency_key": f"{run}-{n}"}) for n, c in enumerate(charges))
        + "\n\n"
    )
    first = json.loads(cli.run("usage", "batch", str(lines), "--json", *base, code=4).stdout)
    assert [i["status"] for i in first["items"]] == ["charged", "charged", "insufficient_funds"]
    assert (first["charged"], first["refused"]) == (2, 1)
    assert agent.balance() == Decimal("6.25")
    # The same file again charges nothing twice; the table names each item's outcome.
    again = cli.run("usage", "batch", str(lines), *base, code=4).stdout
    assert "replayed" in again and "insufficient_funds" in again
    assert agent.balance() == Decimal("6.25")
    # A JSON array works too; every item charged exits 0.
    array = tmp_path / "charges.json"
    rest = {**charges[0], "amount": "6.25", "idempotency_key": f"{run}-array"}
    array.write_text(json.dumps([rest]))
    assert cli.json("usage", "batch", str(array), *base)["charged"] == 1
    assert agent.balance() == 0
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    assert "invalid_request" in cli.run("usage", "batch", str(broken), *base, code=2).stderr


def test_demo_on_the_embedded_server(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [*BILLFOLD, "demo", "--out-dir", str(tmp_path)],
        env={**os.environ, "BILLFOLD_CONFIG_DIR": str(tmp_path / "config")},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert time.monotonic() - started < 60
    pdfs = list(tmp_path.glob("*.pdf"))
    assert len(pdfs) == 1
    assert pdfs[0].read_bytes().startswith(b"%PDF")

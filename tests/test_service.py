"""The service as an operator runs it: the CLI, health checks, OpenAPI, abandoned requests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import requests

from billfold.api.deps import Services, request_fingerprint
from billfold.api.embedded import local_socket
from billfold.clock import now
from billfold.idempotency.models import IdempotencyKey
from tests.helpers import Api, assert_error

BILLFOLD = Path(sys.executable).parent / "billfold"


def test_health_and_openapi(api: Api) -> None:
    assert requests.get(f"{api.base_url}/healthz").json() == {"status": "ok"}
    assert requests.get(f"{api.base_url}/readyz").json() == {"status": "ok"}
    schema = requests.get(f"{api.base_url}/openapi.json").json()
    paths = set(schema["paths"])
    for path in [
        "/api/agents/v1/auth/login",
        "/api/agents/v1/wallet/fund",
        "/api/agents/v1/wallet/transactions",
        "/api/agents/v1/payments/{payment_intent_id}/status",
        "/api/admin/v1/usage-charges",
    ]:
        assert path in paths
    response = requests.get(f"{api.base_url}/healthz")
    assert response.headers["X-Request-Id"].startswith("req_")


def test_embedded_default_serves_with_demo_data(tmp_path: Path) -> None:
    """What `./scripts/run` does: migrate, seed, print credentials that work."""
    sock = local_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    process = subprocess.Popen(
        [str(BILLFOLD), "serve", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = ""
        deadline = time.monotonic() + 60
        assert process.stdout is not None
        while "Demo agent token" not in output or "API docs" not in output:
            assert time.monotonic() < deadline, output
            line = process.stdout.readline()
            assert line or process.poll() is None, output
            output += line
        admin_key = re.search(r"(bf_admin_\S+)", output)
        token = re.search(r"(bf_at_\S+)", output)
        assert admin_key and token, output
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        balance = requests.get(
            f"{base}/api/agents/v1/wallet/balance",
            headers={"Authorization": f"Bearer {token.group(1)}"},
        )
        assert balance.json()["data"]["balance"] == 25
        demo = {"Authorization": f"Bearer {token.group(1)}"}
        plans = requests.get(f"{base}/api/agents/v1/subscriptions/plans", headers=demo)
        listed = plans.json()["data"]["subscription_plans"]
        assert [(p["name"], p["kind"]) for p in listed] == [
            ("Starter", "normal"),
            ("Pro", "normal"),
            ("Pro (yearly)", "normal"),
            ("Extra credits", "addon"),
        ]
        assert all(isinstance(p["id"], int) and p["features"] for p in listed)
        link = requests.post(
            f"{base}/api/agents/v1/subscriptions", json={"plan_id": listed[0]["id"]}, headers=demo
        )
        assert link.status_code == 201, link.text
        assert link.json()["data"]["checkout_url"].startswith(base)
        login = requests.post(
            f"{base}/api/agents/v1/auth/login",
            json={"email": "demo@example.com", "password": "demo-password"},
        )
        assert login.status_code == 200, login.text
        created = requests.post(
            f"{base}/api/admin/v1/accounts",
            json={"email": "someone@example.com", "password": "long enough"},
            headers={"Authorization": f"Bearer {admin_key.group(1)}"},
        )
        assert created.status_code == 201
        assert (tmp_path / "var" / "billfold.db").exists()
        assert (tmp_path / "var" / "admin_key").read_text().strip() == admin_key.group(1)
        assert oct((tmp_path / "var" / "admin_key").stat().st_mode & 0o777) == "0o600"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)


def test_migrate_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    env = {**os.environ, "BILLFOLD_DATABASE_URL": url}
    result = subprocess.run(
        [str(BILLFOLD), "migrate"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout
    assert (tmp_path / "m.db").exists()


def _claim(services: Services, scope: str, key: str, fingerprint: str, age: timedelta) -> None:
    with services.database.transaction() as session:
        session.add(
            IdempotencyKey(
                scope=scope,
                key=key,
                fingerprint=fingerprint,
                status="in_progress",
                created_at=now() - age,
                locked_at=now() - age,
                expires_at=now() + timedelta(hours=24),
            )
        )


def test_abandoned_request_is_taken_over_after_the_lock_timeout(
    api: Api, services: Services
) -> None:
    """A process that died mid-request leaves its key in progress: 409 until it is stale."""
    agent = api.new_agent()
    pm = agent.card()
    body = {"amount": 15, "payment_method_id": pm}
    raw = json.dumps(body).encode()
    fingerprint = request_fingerprint("POST", "/api/agents/v1/wallet/fund", "", raw)
    scope = f"account:{agent.account_id}"

    fresh = f"fresh-{uuid.uuid4()}"
    _claim(services, scope, fresh, fingerprint, timedelta(seconds=1))
    assert_error(
        agent.post("/wallet/fund", body, key=fresh), 409, "idempotency_request_in_progress"
    )
    assert agent.balance() == 0

    stale = f"stale-{uuid.uuid4()}"
    timeout = services.settings.idempotency_lock_timeout_seconds
    _claim(services, scope, stale, fingerprint, timedelta(seconds=timeout + 5))
    response = agent.post("/wallet/fund", body, key=stale)
    assert response.status_code == 200, response.text
    assert agent.balance() == 15
    assert agent.post("/wallet/fund", body, key=stale).headers["Idempotency-Replayed"] == "true"
    assert agent.balance() == 15

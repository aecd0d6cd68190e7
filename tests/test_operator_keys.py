"""Operator keys with scopes: every operator route against every scope, the key's life
(shown once, stored hashed, revoked), the usage-only key of a metering service (also on
the usage fast lane), the bootstrap admin key's rotation, and the CLI's verbs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from sqlalchemy import text

from billfold.api.scopes import ROUTE_SCOPES, USAGE, scope_of
from billfold.application.usecases import operator_keys
from billfold.operator_keys.service import ADMIN, SCOPES
from billfold.security import hash_secret
from billfold.services import Services
from tests.conftest import ADMIN_KEY
from tests.helpers import Api

ADMIN_PREFIX = "/api/admin/"


def _new_key(api: Api, *scopes: str, name: str = "test") -> dict[str, Any]:
    response = api.admin_post("/operator-keys", {"name": name, "scopes": list(scopes)})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def _operator_routes(api: Api) -> list[tuple[str, str]]:
    spec = requests.get(f"{api.base_url}/openapi.json", timeout=30).json()
    return sorted(
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        if path.startswith(ADMIN_PREFIX)
        for method in operations
    )


def test_the_scope_table_names_every_operator_route(api: Api) -> None:
    routes = set(_operator_routes(api))
    assert routes == set(ROUTE_SCOPES), {
        "not in the table (admin only)": sorted(routes - set(ROUTE_SCOPES)),
        "in the table, no such route": sorted(set(ROUTE_SCOPES) - routes),
    }
    assert set(ROUTE_SCOPES.values()) == set(SCOPES)  # every scope opens something


def test_every_operator_route_against_every_scope(api: Api) -> None:
    """A key with one scope reaches exactly its scope's routes; elsewhere 403
    scope_missing naming the scope needed. Requests carry a body no route accepts (a
    JSON array) and made-up ids, so an allowed one is refused later (404, 422), never
    carried out."""
    routes = _operator_routes(api)
    keys = {scope: _new_key(api, scope, name=f"only {scope}")["key"] for scope in SCOPES}
    session = requests.Session()
    for scope, key in keys.items():
        for method, path in routes:
            url = api.base_url + re.sub(r"\{[^}]+\}", "nope", path)
            response = session.request(
                method,
                url,
                data=b"[]",
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                timeout=30,
            )
            needed = scope_of(method, path)
            where = (scope, method, path, response.status_code, response.text[:200])
            if scope in (needed, ADMIN):
                assert response.status_code not in (401, 403), where
            else:
                assert response.status_code == 403, where
                error = response.json()["error"]
                assert (error["code"], error["details"]["scope"]) == ("scope_missing", needed)


def test_a_key_is_shown_once_stored_hashed_and_revoked(api: Api, services: Services) -> None:
    created = _new_key(api, "accounts", "plans", name="support desk")
    secret = created["key"]
    assert secret.startswith("bfo_") and len(secret) > 40
    assert created["key_prefix"] == secret[:12]
    assert created["scopes"] == ["accounts", "plans"]
    listed = api.admin_get("/operator-keys").json()["data"]["items"]
    mine = [item for item in listed if item["id"] == created["id"]]
    assert mine and "key" not in mine[0]
    with services.database.read() as session:
        row = session.execute(
            text("SELECT key_hash, key_prefix FROM operator_keys WHERE id = :id"),
            {"id": created["id"]},
        ).one()
        dumped = json.dumps(
            [list(r) for r in session.execute(text("SELECT * FROM operator_keys")).all()],
            default=str,
        )
    assert row.key_hash == hash_secret(secret) and secret not in dumped

    as_key = {"Authorization": f"Bearer {secret}"}
    accounts = requests.get(f"{api.admin_url('/accounts')}", headers=as_key, timeout=30)
    assert accounts.status_code == 200, accounts.text

    revoked = api.admin_post(f"/operator-keys/{created['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["data"]["revoked_at"]
    again = api.admin_post(f"/operator-keys/{created['id']}/revoke")
    assert again.json()["data"]["revoked_at"] == revoked.json()["data"]["revoked_at"]
    refused = requests.get(f"{api.admin_url('/accounts')}", headers=as_key, timeout=30)
    assert refused.status_code == 401  # at once, in the process that revoked it
    active = api.admin_get("/operator-keys").json()["data"]["items"]
    assert created["id"] not in {item["id"] for item in active}
    everything = api.admin_get("/operator-keys", params={"include_revoked": "true"})
    assert created["id"] in {item["id"] for item in everything.json()["data"]["items"]}
    missing = api.admin_post("/operator-keys/opk_nope/revoke")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "operator_key_not_found"


def test_bad_key_requests_are_refused_and_change_nothing(api: Api) -> None:
    before = len(api.admin_get("/operator-keys").json()["data"]["items"])
    for body in (
        {"name": "x", "scopes": ["everything"]},
        {"name": "x", "scopes": []},
        {"name": "", "scopes": ["admin"]},
        {"scopes": ["admin"]},
    ):
        response = api.admin_post("/operator-keys", body)
        assert response.status_code == 422, (body, response.text)
    assert len(api.admin_get("/operator-keys").json()["data"]["items"]) == before
    assert (
        requests.get(
            api.admin_url("/accounts"), headers={"Authorization": "Bearer bfo_made_up"}, timeout=30
        ).status_code
        == 401
    )


def test_a_usage_only_key_charges_usage_and_nothing_else(api: Api) -> None:
    """A metering service's key: usage charges (through the fast lane once the key is
    known to the process), holds and batches; every other operator request is 403."""
    key = _new_key(api, USAGE, name="metering")["key"]
    agent = api.new_agent()
    agent.fund(10)
    headers = {"Authorization": f"Bearer {key}"}
    statuses = [
        requests.post(
            api.admin_url("/usage-charges"),
            json={"account_id": agent.account_id, "amount": "1", "usecase": "tokens"},
            headers={**headers, "Idempotency-Key": f"usage-only-{agent.account_id}-{n}"},
            timeout=30,
        ).status_code
        for n in range(3)
    ]
    assert statuses == [201, 201, 201]
    hold = requests.post(
        api.admin_url("/usage-holds"),
        json={"account_id": agent.account_id, "amount": "1", "usecase": "llm"},
        headers=headers,
        timeout=30,
    )
    assert hold.status_code == 201, hold.text
    assert agent.balance() == 6
    for method, path in (("GET", "/accounts"), ("POST", "/adjustments"), ("GET", "/plans")):
        refused = requests.request(
            method, api.admin_url(path), json={}, headers=headers, timeout=30
        )
        assert refused.status_code == 403, (path, refused.text)
    metrics = requests.get(f"{api.base_url}/metrics", headers=headers, timeout=30)
    assert metrics.status_code == 401  # the metrics ask for an admin key


def test_during_a_rotation_the_previous_admin_key_still_works(services: Services) -> None:
    rotating = dataclasses.replace(services, previous_admin_key_hash=hash_secret("old-key"))
    assert operator_keys.authorize(rotating, "old-key") == operator_keys.ALL_SCOPES
    assert operator_keys.authorize(rotating, ADMIN_KEY) == operator_keys.ALL_SCOPES
    assert operator_keys.authorize(services, "old-key") is None  # rotation over


def test_the_cli_creates_lists_and_revokes_keys(api: Api, tmp_path: Path) -> None:
    env = {
        "BILLFOLD_ADMIN_KEY": api.admin_key,
        "BILLFOLD_URL": api.base_url,
        "BILLFOLD_CONFIG_DIR": str(tmp_path),
    }

    def cli(*args: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "billfold.cli", "operator-keys", *args, "--json"],
            env={**_plain_env(), **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return json.loads(done.stdout)

    created = cli("create", "billing bot", "--scope", "coupons", "--scope", "plans")
    assert created["scopes"] == ["coupons", "plans"] and created["key"].startswith("bfo_")
    assert created["id"] in {item["id"] for item in cli("list")["items"]}
    assert cli("revoke", created["id"])["revoked_at"]
    assert created["id"] not in {item["id"] for item in cli("list")["items"]}


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}


@pytest.mark.postgres
def test_keys_are_never_stored_in_the_clear_on_postgresql(api: Api, services: Services) -> None:
    secret = _new_key(api, "coupons")["key"]
    with psycopg.connect(services.database.driver_url) as connection:
        found = connection.execute(
            "SELECT count(*) FROM operator_keys WHERE key_hash = %s OR key_prefix = %s",
            (secret, secret),
        ).fetchone()
        stored = connection.execute(
            "SELECT count(*) FROM idempotency_keys WHERE response_body LIKE %s", (f"%{secret}%",)
        ).fetchone()
    assert found == (0,) and stored == (0,)

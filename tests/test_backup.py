"""Backups and the ledger audit: `billfold backup` copies the SQLite database while the
server writes, and the copy restores to a consistent ledger holding every charge
acknowledged before the backup began; `billfold check-ledger` finds what is off."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import requests

from billfold.application.usecases.wallet import audit_ledger
from billfold.services import Services
from tests.helpers import Api
from tests.test_serve import serving

BILLFOLD = [sys.executable, "-m", "billfold.cli"]
AMOUNT = Decimal("0.01")


def _cli(*args: str, database: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env.update(BILLFOLD_DATABASE_URL=f"sqlite:///{database}", COLUMNS="200")
    done = subprocess.run(
        [*BILLFOLD, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
    return done


def test_a_backup_under_write_load_restores_to_a_consistent_ledger(tmp_path: Path) -> None:
    acknowledged: list[tuple[str, float]] = []  # (key, when its 201 arrived)
    stop = threading.Event()
    lock = threading.Lock()
    with serving(tmp_path, "--no-worker") as served:
        api: Api = served.api
        agent = api.new_agent()
        assert agent.fund(100).status_code == 200

        def load() -> None:
            session = requests.Session()
            while not stop.is_set():
                key = f"backup-{uuid.uuid4()}"
                response = session.post(
                    api.admin_url("/usage-charges"),
                    json={"account_id": agent.account_id, "amount": str(AMOUNT), "usecase": "b"},
                    headers={"Authorization": f"Bearer {api.admin_key}", "Idempotency-Key": key},
                    timeout=30,
                )
                assert response.status_code == 201, response.text
                with lock:
                    acknowledged.append((key, time.monotonic()))

        clients = [threading.Thread(target=load) for _ in range(4)]
        for client in clients:
            client.start()
        time.sleep(1.0)
        copy = tmp_path / "copy.db"
        began = time.monotonic()
        done = _cli("backup", str(copy), database=tmp_path / "billfold.db")
        time.sleep(0.5)  # the server kept writing through the backup
        stop.set()
        for client in clients:
            client.join(30)
        assert "Backed up" in done.stdout
        written_after = [key for key, at in acknowledged if at > began]
        assert written_after, "the server did not keep writing"

    before = {key for key, at in acknowledged if at < began}
    assert before
    checked = _cli("check-ledger", "--json", database=copy)
    assert '"consistent":true' in checked.stdout.replace(" ", "")
    with sqlite3.connect(copy) as restored:
        keys = {row[0] for row in restored.execute("SELECT key FROM idempotency_keys")}
        charged = restored.execute(
            "SELECT count(*) FROM ledger_transactions"
            " WHERE account_id = ? AND kind = 'usage_charge'",
            (agent.account_id,),
        ).fetchone()[0]
    assert before <= keys  # every charge acknowledged before the backup began is in it
    assert len(before) <= charged <= len(acknowledged)


def test_check_ledger_finds_a_tampered_wallet(tmp_path: Path) -> None:
    with serving(tmp_path, "--no-worker") as served:
        agent = served.api.new_agent()
        assert agent.fund(10).status_code == 200
        copy = tmp_path / "copy.db"
        _cli("backup", str(copy), database=tmp_path / "billfold.db")
    _cli("check-ledger", database=copy)
    _cli("backup", str(copy), database=tmp_path / "billfold.db", code=2)  # exists
    with sqlite3.connect(copy) as tampered:
        tampered.execute(
            "UPDATE wallets SET purchased_micros = purchased_micros + 1,"
            " balance_micros = balance_micros + 1 WHERE account_id = ?",
            (agent.account_id,),
        )
    found = _cli("check-ledger", database=copy, code=1)
    assert "INCONSISTENT" in found.stdout and agent.account_id in found.stdout


def test_backup_refuses_postgresql() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env["BILLFOLD_DATABASE_URL"] = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    done = subprocess.run(
        [*BILLFOLD, "backup", "/tmp/never.db"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "pg_dump" in done.stdout


def test_the_audit_of_the_test_ledger_is_consistent(api: Api, services: Services) -> None:
    agent = api.new_agent()
    assert agent.fund(10).status_code == 200
    held = api.admin_post(
        "/usage-holds", {"account_id": agent.account_id, "amount": "1", "usecase": "llm"}
    )
    assert held.status_code == 201
    report = audit_ledger(services)
    assert report.accounts >= 1
    mine = [p for p in report.problems if p.account_id == agent.account_id]
    assert not mine, mine

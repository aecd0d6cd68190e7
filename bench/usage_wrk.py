"""Benchmark of usage charges with wrk as the load generator (a client that costs little CPU).

Starts `billfold serve` (as bench/usage_charges.py does, with --workers N when the
installed CLI has it) and drives it with wrk and the Lua scripts in bench/wrk/, one wrk
connection per wrk thread. Scenarios, each at every --clients count:

    a  usage charges, one funded account per connection
    b  usage charges, one hot account for all connections
    c  hold + capture pairs (POST /usage-holds, then /usage-holds/{id}/capture)
    d  batches of --batch-size charges (POST /usage-charges/batch)
    e  usage charges on the embedded SQLite default (--sqlite-clients, no pgbench)

a-d run on PostgreSQL, each level next to pgbench's built-in tpcb-like script at the same
client count on the same server (billfold / pgbench = charges/s / TPS). c and d are
skipped, with a message, when the server answers their endpoint 404 or 405.

Accounting: each wrk thread counts the charges acknowledged to it (201; 200 for a capture;
the "charged" items of a batch) and reports the requests that got no answer (in flight
when wrk stopped, or lost with a connection). After every run the script compares the
balances' drop with those counts (acknowledged <= charged on the server <= acknowledged +
in doubt), replays each request in doubt with its Idempotency-Key (which charges it or
replays its answer) and then requires, for every account, balance = funding - amount x
acknowledged charges exactly, and the ledger check consistent. --kill-test adds a
scenario-a run during which one API worker process gets kill -9. --repeat N runs each
PostgreSQL level N times, each run followed by its own pgbench run, and adds the median of
the N ratios: on a machine whose speed drifts by half within minutes, the figure to hold
against a target.

    .venv/bin/python bench/usage_wrk.py [--seconds 10] [--warmup 2] [--clients 1,8,32] \
        [--scenarios a,b,c,d,e] [--workers 2] [--repeat 1] [--kill-test] [--json PATH]

Prints Markdown tables at the end (progress goes to stderr). Everything it creates (the
databases billfold_wrk_bench and billfold_wrk_pgbench, a temporary directory, the server
processes) is removed at the end, also on error or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.usage_charges import (
    BILLFOLD_BIN,
    CHARGE,
    HOST,
    NCPU,
    PG_PORT,
    PGBENCH_SCALE,
    REQUEST_TIMEOUT,
    Code,
    CpuMeter,
    CpuShare,
    PgbenchResult,
    Server,
    _on_sigterm,
    background_load,
    drop_database,
    fmt,
    log,
    new_session,
    pg_version,
    pgbench_init,
    pgbench_run,
    provision,
    recreate_database,
)

BENCH_DB = "billfold_wrk_bench"  # not usage_charges.py's names: both may run on one server
PGBENCH_DB = "billfold_wrk_pgbench"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
WRK_DIR = Path(__file__).resolve().parent / "wrk"
WRK_TIMEOUT = "30s"  # per request, for wrk's timeout count
SETTLE_SECONDS = 1.0  # after wrk exits, for the server to finish what was in flight
REPLAY_BUSY_SECONDS = 15.0  # how long a replay retries while the key is still in progress
HOLD_TTL = 3600
WORKING_TREE = Code("the working tree, as the venv installed it")
SQLITE_TARGET = 1000.0  # charges/s the SQLite default should reach at 8 clients

SCENARIOS = {
    "a": "own account per connection",
    "b": "single hot account",
    "c": "hold + capture",
    "d": "batches",
    "e": "SQLite, own account per connection",
}


# --------------------------------------------------------------------------- server


def serve_help() -> str:
    done = subprocess.run(
        [str(BILLFOLD_BIN), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    return done.stdout + done.stderr


def serve_options(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(extra `billfold serve` options, notes) for the options this CLI has."""
    text = serve_help()
    options: list[str] = []
    notes: list[str] = []
    if "--workers" in text:
        options += ["--workers", str(args.workers)]
    else:
        notes.append("`billfold serve` has no --workers: one API process")
    if args.job_workers == 0 and "--no-worker" in text:
        options.append("--no-worker")
    elif args.job_workers > 0 and "--job-workers" in text:
        options += ["--job-workers", str(args.job_workers)]
    return options, notes


def _ppids() -> dict[int, int]:
    """pid -> parent pid of every process."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                tail = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(tail[1])
    return parents


def descendants(pid: int) -> set[int]:
    parents = _ppids()
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class WrkServer(Server):
    """usage_charges.Server, and: its uvicorn worker processes; stop() also kills what is
    left of its process group (it runs in a session of its own)."""

    def api_workers(self) -> list[int]:
        """PIDs of the uvicorn worker processes (children of serve), oldest first."""
        if self.pid is None:
            return []
        parents = _ppids()
        return sorted(
            pid
            for pid, ppid in parents.items()
            if ppid == self.pid
            and "spawn_main" in (cmd := _cmdline(pid))
            and "resource_tracker" not in cmd
        )

    def stop(self) -> None:
        pid = self.pid
        super().stop()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # leftover children of our own server only


class TreeCpuMeter(CpuMeter):
    """CpuMeter with every process of the server's tree as 'server' and wrk as 'client'."""

    def __init__(self, server_pid: int | None) -> None:
        super().__init__(server_pid)
        self.tree: set[int] = set()

    def _take(self) -> None:
        super()._take()
        if self.server_pid is not None:
            self.tree |= descendants(self.server_pid)

    def _classify(self, pid: int, comm: str) -> str:
        if pid in self.tree:
            return "server"
        if comm == "wrk":
            return "client"
        return super()._classify(pid, comm)


# --------------------------------------------------------------------------- HTTP helpers


def charge_body(account_id: str) -> dict:
    return {"account_id": account_id, "amount": CHARGE, "usecase": "bench"}


def hold_body(account_id: str) -> dict:
    return {**charge_body(account_id), "ttl_seconds": HOLD_TTL}


def batch_body(account_id: str, key: str, size: int) -> dict:
    return {
        "charges": [
            {**charge_body(account_id), "idempotency_key": f"{key}-{i}"} for i in range(1, size + 1)
        ]
    }


class Admin:
    """requests against the server's admin API (numbers as JSON numbers, like wrk sends)."""

    def __init__(self, server: Server) -> None:
        self.base = f"{server.base}/api/admin/v1"
        self.session = new_session()
        self.session.headers.update(
            {"Authorization": f"Bearer {server.admin_key}", "Content-Type": "application/json"}
        )

    def close(self) -> None:
        self.session.close()

    def post(self, path: str, body: dict | None, key: str | None) -> requests.Response:
        data = None if body is None else json.dumps(body, default=_number)
        headers = {"Idempotency-Key": key} if key else {}
        return self.session.post(
            self.base + path, data=data, headers=headers, timeout=REQUEST_TIMEOUT
        )

    def replay(self, path: str, body: dict | None, key: str | None) -> requests.Response:
        """POST, again while the server says the key's first request is still running."""
        deadline = time.monotonic() + REPLAY_BUSY_SECONDS
        for _ in range(1000):
            response = self.post(path, body, key)
            if response.status_code != 409 or time.monotonic() > deadline:
                return response
            text = response.text.lower()
            if "progress" not in text and "in_use" not in text and "concurrent" not in text:
                return response  # a conflict of the request itself (e.g. hold not active)
            time.sleep(0.2)
        return response

    def ledger(self, account_id: str) -> tuple[Decimal, bool]:
        response = self.session.get(
            f"{self.base}/accounts/{account_id}/ledger-check", timeout=REQUEST_TIMEOUT
        )
        if response.status_code != 200:
            raise RuntimeError(f"ledger check: HTTP {response.status_code}: {response.text}")
        data = response.json()["data"]
        return Decimal(str(data["cached"]["balance"])), bool(data["consistent"])


def _number(value: object) -> object:
    """Decimals as JSON numbers (repr of the float of 0.0001 is "0.0001": exact text)."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(type(value))


def batch_charged(text: str) -> int:
    """Items of a batch answer whose charge is in the ledger: "charged" by this request, or
    "replayed" with the charge its key stored earlier."""
    try:
        items = json.loads(text)["data"]["items"]
    except (ValueError, KeyError, TypeError):
        return 0
    return sum(
        1
        for item in items
        if isinstance(item, dict)
        and (
            item.get("status") == "charged"
            or (item.get("status") == "replayed" and item.get("charge") is not None)
        )
    )


# --------------------------------------------------------------------------- books


@dataclass
class Books:
    """Each account's balance after provisioning, and its acknowledged charges since."""

    funding: dict[str, Decimal] = field(default_factory=dict)
    charged: Counter[str] = field(default_factory=Counter)

    def open(self, admin: Admin, account_ids: list[str]) -> None:
        for account_id in account_ids:
            self.funding[account_id] = admin.ledger(account_id)[0]

    def verify(self, admin: Admin) -> tuple[list[str], dict]:
        """Every account: consistent, and balance = funding - CHARGE x acknowledged."""
        problems = []
        total_funding = total_balance = Decimal(0)
        for account_id, funding in sorted(self.funding.items()):
            balance, consistent = admin.ledger(account_id)
            expected = funding - self.charged[account_id] * CHARGE
            total_funding += funding
            total_balance += balance
            if not consistent or balance != expected:
                problems.append(
                    f"{account_id}: consistent={consistent} balance={balance} "
                    f"expected={expected} ({self.charged[account_id]} acknowledged charges)"
                )
        charges = sum(self.charged.values())
        summary = {
            "accounts": len(self.funding),
            "funding": str(total_funding),
            "balances": str(total_balance),
            "acknowledged_charges": charges,
            "exact": total_balance == total_funding - charges * CHARGE,
        }
        if not summary["exact"]:
            problems.append(
                f"sum of balances {total_balance} != funding {total_funding} - {charges} x {CHARGE}"
            )
        return problems, summary


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkOutput:
    threads: list[dict]
    summary: dict
    stdout: str

    @property
    def acked(self) -> int:
        return sum(int(t.get("acked") or 0) for t in self.threads)

    @property
    def statuses(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for thread in self.threads:
            statuses = thread.get("statuses") or {}
            if isinstance(statuses, dict):
                counts.update({k: int(v) for k, v in statuses.items()})
        return counts

    @property
    def socket_errors(self) -> dict[str, int]:
        errors = self.summary.get("errors") or {}
        return {k: int(v) for k, v in errors.items() if k != "status" and v}


def wrk_command(server: Server, script: str, clients: int, seconds: float) -> list[str]:
    duration = f"{max(1, round(seconds))}s"
    base = [WRK, "-t", str(clients), "-c", str(clients), "-d", duration, "--timeout", WRK_TIMEOUT]
    return [*base, "-s", str(WRK_DIR / script), server.base + "/"]


def wrk_env(server: Server, accounts: list[str], run_tag: str, batch: int) -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_RUN": run_tag,
        "BENCH_ACCOUNTS": ",".join(accounts),
        "BENCH_ADMIN_KEY": server.admin_key,
        "BENCH_AMOUNT": str(CHARGE),
        "BENCH_TTL": str(HOLD_TTL),
        "BENCH_BATCH": str(batch),
    }


def parse_wrk(stdout: str, stderr: str, returncode: int) -> WrkOutput:
    threads, summary = [], None
    for line in stdout.splitlines():
        if line.startswith("BENCHJSON "):
            record = json.loads(line[len("BENCHJSON ") :])
            if "thread" in record:
                threads.append(record["thread"])
            else:
                summary = record["summary"]
    if returncode != 0 or summary is None:
        raise RuntimeError(f"wrk failed ({returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return WrkOutput(threads, summary, stdout)


def run_wrk(
    server: WrkServer,
    script: str,
    accounts: list[str],
    clients: int,
    seconds: float,
    run_tag: str,
    *,
    batch: int,
    kill_after: float | None = None,
) -> tuple[WrkOutput, dict]:
    """One wrk run; with kill_after, kill -9 one API worker that many seconds in."""
    command = wrk_command(server, script, clients, seconds)
    env = wrk_env(server, accounts, run_tag, batch)
    kill: dict = {}
    with subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            if kill_after is not None:
                time.sleep(kill_after)
                workers = server.api_workers()
                if workers:
                    victim = workers[0]
                    os.kill(victim, signal.SIGKILL)
                    kill = {"pid": victim, "workers_before": workers, "at_s": kill_after}
                    log(f"kill -9 API worker {victim} (workers {workers})")
                else:
                    kill = {"pid": None, "error": "no uvicorn worker processes found"}
            stdout, stderr = proc.communicate(timeout=seconds + 120)
        except BaseException:
            proc.kill()
            raise
    if kill.get("pid"):
        kill["workers_after"] = server.api_workers()
    return parse_wrk(stdout, stderr, proc.returncode), kill


# --------------------------------------------------------------------------- scenarios


@dataclass
class Result:
    backend: str
    scenario: str
    clients: int
    elapsed: float
    requests: int
    rps: float
    charges: int  # acknowledged in the measured run
    charges_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    cpu: CpuShare
    # Accounting over warm-up + measured run:
    acknowledged: int = 0  # acknowledged to wrk
    in_doubt: int = 0  # requests without an answer
    server_charges: int = 0  # balances' drop / amount, before replaying the ones in doubt
    server_upper: int = 0  # acknowledged + what the requests in doubt could charge
    resolved: int = 0  # charges acknowledged by replaying requests in doubt
    exact: bool = False  # balances = before - amount x (acknowledged + resolved)
    pgbench: PgbenchResult | None = None
    kill: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        if self.pgbench is None or self.pgbench.tps <= 0:
            return math.nan
        return self.charges_per_s / self.pgbench.tps


SCRIPT = {"a": "charge.lua", "b": "charge.lua", "e": "charge.lua"}
SCRIPT |= {"c": "hold_capture.lua", "d": "batch.lua"}


class Runner:
    """Runs scenarios against one server and keeps its books."""

    def __init__(self, server: WrkServer, args: argparse.Namespace, run_tag: str) -> None:
        self.server = server
        self.args = args
        self.run_tag = run_tag
        self.admin = Admin(server)
        self.books = Books()
        self.runs = 0

    def provision(self, count: int, tag: str) -> list[str]:
        accounts = provision(self.server, count, tag)
        self.books.open(self.admin, accounts)
        return accounts

    # ----------------------------------------------------------------- probes

    def probe(self, scenario: str, account_id: str) -> str | None:
        """None when the scenario's endpoint works (what the probe charged is booked),
        else why the scenario is skipped."""
        key = f"{self.run_tag}-probe-{scenario}-{self.runs}"
        if scenario == "c":
            held = self.admin.post("/usage-holds", hold_body(account_id), key)
            if held.status_code in (404, 405):
                return f"POST /usage-holds answered {held.status_code}: endpoint not there"
            if held.status_code != 201:
                return f"POST /usage-holds answered {held.status_code}: {held.text[:300]}"
            hold_id = held.json()["data"]["id"]
            captured = self.admin.post(
                f"/usage-holds/{hold_id}/capture", {"amount": CHARGE}, f"{key}-capture"
            )
            if captured.status_code in (404, 405):
                self.release(hold_id, key)
                return f"POST /usage-holds/{{id}}/capture answered {captured.status_code}"
            if captured.status_code not in (200, 201):
                self.release(hold_id, key)
                return f"capture answered {captured.status_code}: {captured.text[:300]}"
            self.books.charged[account_id] += 1
            return None
        if scenario == "d":
            # A batch takes no Idempotency-Key: each item has its own.
            answer = self.admin.post("/usage-charges/batch", batch_body(account_id, key, 1), None)
            if answer.status_code in (404, 405):
                return (
                    f"POST /usage-charges/batch answered {answer.status_code}: endpoint not there"
                )
            if answer.status_code != 200:
                return f"POST /usage-charges/batch answered {answer.status_code}: {answer.text}"
            self.books.charged[account_id] += batch_charged(answer.text)
            return None
        return None

    def release(self, hold_id: str, key: str) -> int:
        return self.admin.post(
            f"/usage-holds/{hold_id}/release", None, f"{key}-release"
        ).status_code

    # ----------------------------------------------------------------- resolving

    def resolve(self, outputs: list[WrkOutput]) -> tuple[Counter[str], list[str]]:
        """Replay every request in doubt, release holds left open; charges acknowledged
        by the replays, per account."""
        resolved: Counter[str] = Counter()
        problems: list[str] = []
        for output in outputs:
            for thread in output.threads:
                account = thread["account"]
                doubt = thread.get("doubt") or []
                captured_by_replay: set[str] = set()
                for entry in doubt:
                    kind, key, *rest = entry.split(" ")
                    if kind == "charge":
                        answer = self.admin.replay("/usage-charges", charge_body(account), key)
                        if answer.status_code == 201:
                            resolved[account] += 1
                        elif answer.status_code != 402:
                            problems.append(f"replay {entry}: {answer.status_code} {answer.text}")
                    elif kind == "hold":
                        answer = self.admin.replay("/usage-holds", hold_body(account), key)
                        if answer.status_code == 201:
                            self.release(answer.json()["data"]["id"], key)
                        elif answer.status_code != 402:
                            problems.append(f"replay {entry}: {answer.status_code} {answer.text}")
                    elif kind == "capture":
                        hold_id = rest[0]
                        path = f"/usage-holds/{hold_id}/capture"
                        answer = self.admin.replay(path, {"amount": CHARGE}, key)
                        if answer.status_code in (200, 201):
                            resolved[account] += 1
                            captured_by_replay.add(hold_id)
                        # 409: the hold was captured by a later capture of the connection
                    elif kind == "batch":
                        body = batch_body(account, key, self.args.batch_size)
                        answer = self.admin.replay("/usage-charges/batch", body, None)
                        if answer.status_code == 200:
                            resolved[account] += batch_charged(answer.text)
                        else:
                            problems.append(f"replay {entry}: {answer.status_code} {answer.text}")
                left_open = [thread.get("bench_open_hold")]
                left_open += (thread.get("bench_failed_holds") or "").split(",")
                for hold_id in left_open:
                    if hold_id and hold_id not in captured_by_replay:
                        self.release(hold_id, f"{self.run_tag}-{hold_id}")
        return resolved, problems

    # ----------------------------------------------------------------- one level

    def measure(
        self,
        scenario: str,
        accounts: list[str],
        clients: int,
        *,
        backend: str,
        kill: bool = False,
    ) -> Result:
        args = self.args
        script = SCRIPT[scenario]
        before = {a: self.admin.ledger(a)[0] for a in dict.fromkeys(accounts)}
        outputs: list[WrkOutput] = []
        self.runs += 1
        tag = f"{self.run_tag}-{scenario}{clients}-{self.runs}"
        if args.warmup > 0:
            warm, _ = run_wrk(
                self.server,
                script,
                accounts,
                clients,
                args.warmup,
                f"{tag}w",
                batch=args.batch_size,
            )
            outputs.append(warm)
        meter = TreeCpuMeter(self.server.pid)
        meter.start()
        measured, kill_info = run_wrk(
            self.server,
            script,
            accounts,
            clients,
            args.seconds,
            f"{tag}m",
            batch=args.batch_size,
            kill_after=args.seconds / 2 if kill else None,
        )
        cpu = meter.stop()
        outputs.append(measured)

        # What the server charged, against what wrk was told.
        time.sleep(SETTLE_SECONDS)
        acked: Counter[str] = Counter()
        weight = args.batch_size if scenario == "d" else 1
        in_doubt = upper_extra = 0
        for output in outputs:
            for thread in output.threads:
                acked[thread["account"]] += int(thread.get("acked") or 0)
                doubt = thread.get("doubt") or []
                in_doubt += len(doubt)
                upper_extra += weight * len(doubt)
                # holds answered but not captured keep their amount out of the balance
                upper_extra += 1 if thread.get("bench_open_hold") else 0
                upper_extra += len(
                    [h for h in (thread.get("bench_failed_holds") or "").split(",") if h]
                )
        dropped = sum(before[a] - self.admin.ledger(a)[0] for a in before)
        server_charges = int(dropped / CHARGE)
        acknowledged = sum(acked.values())
        problems = []
        if server_charges < acknowledged:
            problems.append(
                f"server charged {server_charges} < {acknowledged} acknowledged: "
                "acknowledged charges are missing from the ledger"
            )
        if server_charges > acknowledged + upper_extra:
            problems.append(
                f"server charged {server_charges} > {acknowledged} acknowledged + "
                f"{upper_extra} possible from requests in doubt / open holds"
            )

        resolved, replay_problems = self.resolve(outputs)
        problems += replay_problems
        self.books.charged.update(acked)
        self.books.charged.update(resolved)
        exact = True
        for account_id, balance_before in before.items():
            balance, consistent = self.admin.ledger(account_id)
            expected = balance_before - (acked[account_id] + resolved[account_id]) * CHARGE
            if balance != expected or not consistent:
                exact = False
                problems.append(
                    f"{account_id}: balance {balance} != {expected} (consistent={consistent})"
                )

        latency = measured.summary["latency_us"]["percentiles"]
        elapsed = float(measured.summary["duration_us"]) / 1e6
        statuses = measured.statuses
        non_2xx = sum(n for status, n in statuses.items() if not status.startswith("2"))
        charges = measured.acked
        result = Result(
            backend=backend,
            scenario=SCENARIOS[scenario] + (", kill -9 one API worker" if kill else ""),
            clients=clients,
            elapsed=elapsed,
            requests=int(measured.summary["requests"]),
            rps=int(measured.summary["requests"]) / elapsed if elapsed else math.nan,
            charges=charges,
            charges_per_s=charges / elapsed if elapsed else math.nan,
            p50_ms=float(latency["50"]) / 1000,
            p90_ms=float(latency["90"]) / 1000,
            p99_ms=float(latency["99"]) / 1000,
            non_2xx=non_2xx,
            statuses=dict(statuses),
            socket_errors=measured.socket_errors,
            cpu=cpu,
            acknowledged=acknowledged,
            in_doubt=in_doubt,
            server_charges=server_charges,
            server_upper=acknowledged + upper_extra,
            resolved=sum(resolved.values()),
            exact=exact,
            kill=kill_info,
            problems=problems,
        )
        if kill and not kill_info.get("pid"):
            result.problems.append(f"kill test: {kill_info.get('error', 'no worker killed')}")
        log(
            f"{backend} {result.scenario} x{clients}: {result.rps:.1f} req/s, "
            f"{result.charges_per_s:.1f} charges/s, p50 {result.p50_ms:.1f} ms, "
            f"p99 {result.p99_ms:.1f} ms, statuses {result.statuses}, "
            f"socket errors {result.socket_errors}; acknowledged {acknowledged}, "
            f"server {server_charges}, in doubt {in_doubt}, resolved {result.resolved}"
        )
        for line in problems:
            log(f"PROBLEM: {line}")
        return result


# --------------------------------------------------------------------------- backends


@contextmanager
def started(server: WrkServer, servers: list[WrkServer]) -> Iterator[WrkServer]:
    servers.append(server)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Outcome:
    results: list[Result] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ledger: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def bench_postgres(
    args: argparse.Namespace,
    workdir: Path,
    servers: list[WrkServer],
    run_tag: str,
    options: list[str],
    out: Outcome,
) -> None:
    wanted = [s for s in "abcd" if s in args.scenarios]
    if not wanted and not args.kill_test:
        return
    recreate_database(BENCH_DB)
    log(f"pgbench: initializing {PGBENCH_DB} (scale {PGBENCH_SCALE})")
    pgbench_init(PGBENCH_DB)
    url = f"postgresql+psycopg://postgres@{HOST}:{PG_PORT}/{BENCH_DB}"
    server = WrkServer(url, workdir, "postgresql", WORKING_TREE, options)
    with started(server, servers):
        runner = Runner(server, args, run_tag)
        try:
            accounts = runner.provision(max(args.clients), f"{run_tag}-pg")
            hot = runner.provision(1, f"{run_tag}-pg-hot")
            if args.warmup > 0:
                pgbench_run(2, max(1, round(args.warmup)), PGBENCH_DB)  # warm, unrecorded
            baselines: dict[int, PgbenchResult] = {}

            def baseline(n: int) -> PgbenchResult:
                if n not in baselines:
                    baselines[n] = pgbench_run(n, args.seconds, PGBENCH_DB)
                    log(f"pgbench -c {n}: {baselines[n].tps:.1f} tps")
                return baselines[n]

            for scenario in wanted:
                if scenario in "cd":
                    why = runner.probe(scenario, accounts[0])
                    if why is not None:
                        message = f"scenario {scenario} ({SCENARIOS[scenario]}) skipped: {why}"
                        log(message)
                        out.skipped.append(message)
                        continue
                for n in args.clients:
                    targets = hot if scenario == "b" else accounts[:n]
                    for _ in range(args.repeat):
                        result = runner.measure(scenario, targets, n, backend="PostgreSQL")
                        # Repeated: each run paired with a pgbench run right after it, so a
                        # ratio compares two runs a few seconds apart on a noisy machine.
                        result.pgbench = (
                            pgbench_run(n, args.seconds, PGBENCH_DB)
                            if args.repeat > 1
                            else baseline(n)
                        )
                        out.results.append(result)
            if args.kill_test:
                n = max(args.clients)
                result = runner.measure("a", accounts[:n], n, backend="PostgreSQL", kill=True)
                result.pgbench = baseline(n)
                out.results.append(result)
            problems, summary = runner.books.verify(runner.admin)
            out.problems += [f"PostgreSQL: {p}" for p in problems]
            out.ledger["PostgreSQL"] = summary
        finally:
            runner.admin.close()
        out.problems += [f"PostgreSQL server log: {line}" for line in server.errors_in_log()]


def bench_sqlite(
    args: argparse.Namespace,
    workdir: Path,
    servers: list[WrkServer],
    run_tag: str,
    options: list[str],
    out: Outcome,
) -> None:
    if "e" not in args.scenarios:
        return
    url = f"sqlite:///{workdir / 'bench.db'}"
    # As many API processes as `billfold serve` runs by default (one per core; before
    # the writer gate, one on SQLite), unless --sqlite-workers names them.
    sqlite_options = list(options)
    if "--workers" in sqlite_options:
        at = sqlite_options.index("--workers")
        del sqlite_options[at : at + 2]
    if args.sqlite_workers:
        sqlite_options += ["--workers", str(args.sqlite_workers)]
    server = WrkServer(url, workdir, "sqlite", WORKING_TREE, sqlite_options)
    with started(server, servers):
        runner = Runner(server, args, run_tag)
        try:
            n = args.sqlite_clients
            accounts = runner.provision(n, f"{run_tag}-sqlite")
            out.results.append(runner.measure("e", accounts, n, backend="SQLite"))
            problems, summary = runner.books.verify(runner.admin)
            out.problems += [f"SQLite: {p}" for p in problems]
            out.ledger["SQLite"] = summary
        finally:
            runner.admin.close()
        out.problems += [f"SQLite server log: {line}" for line in server.errors_in_log()]


# --------------------------------------------------------------------------- report


def render(out: Outcome, args: argparse.Namespace, background: tuple[float, list[str]]) -> str:
    busy, busiest = background
    lines = [
        f"Usage charges driven by wrk (one connection per wrk thread): {args.seconds} s "
        f"per level after a {args.warmup:g} s warm-up; amount {CHARGE}; "
        f"`billfold serve` {' '.join(out.notes) or ''}; pgbench tpcb-like, scale "
        f"{PGBENCH_SCALE}, same client count, same PostgreSQL. Machine load before the run: "
        f"{fmt(busy, 0)}% of {NCPU} cores" + (f" ({', '.join(busiest)})." if busiest else "."),
        "",
        "| Database | Scenario | Clients | Requests/s | Charges/s | p50 ms | p99 ms "
        "| non-2xx | socket errors | pgbench TPS | billfold / pgbench |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in out.results:
        base = r.pgbench
        errors = sum(r.socket_errors.values())
        lines.append(
            f"| {r.backend} | {r.scenario} | {r.clients} | {fmt(r.rps)} | {fmt(r.charges_per_s)} "
            f"| {fmt(r.p50_ms)} | {fmt(r.p99_ms)} | {r.non_2xx} | {errors} "
            f"| {fmt(base.tps) if base else '—'} "
            f"| {fmt(r.ratio, 3) if base else '—'} |"
        )
    if args.repeat > 1:
        lines += ["", *medians(out.results)]
    for r in out.results:
        if r.backend == "SQLite":
            verdict = "meets" if r.charges_per_s >= SQLITE_TARGET else "misses"
            lines.append("")
            lines.append(
                f"SQLite at {r.clients} clients: {fmt(r.charges_per_s)} charges/s, "
                f"{verdict} the target of {SQLITE_TARGET:,.0f}/s."
            )
    lines += [
        "",
        "Accounting per level (warm-up + measured run): acknowledged = charges answered to "
        "wrk; server = the balances' drop / amount right after the run (acknowledged <= "
        "server <= bound must hold); in doubt = requests without an answer; resolved = "
        "charges acknowledged by replaying those with their Idempotency-Key; exact = every "
        "balance equals its value before minus amount x (acknowledged + resolved), ledger "
        "consistent.",
        "",
        "| Database | Scenario | Clients | acknowledged | server | bound | in doubt "
        "| resolved | exact |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in out.results:
        lines.append(
            f"| {r.backend} | {r.scenario} | {r.clients} | {r.acknowledged:,} "
            f"| {r.server_charges:,} | {r.server_upper:,} | {r.in_doubt} | {r.resolved} "
            f"| {'yes' if r.exact else '**no**'} |"
        )
    lines += [
        "",
        f"CPU during each measured run, % of the machine's {NCPU} cores (client = wrk; "
        "server = every process of `billfold serve`; postgres = all PostgreSQL processes; "
        "other = everything else):",
        "",
        "| Database | Scenario | Clients | busy | client | server | postgres | other |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in out.results:
        c = r.cpu
        lines.append(
            f"| {r.backend} | {r.scenario} | {r.clients} | {fmt(c.busy, 0)} "
            f"| {fmt(c.client, 0)} | {fmt(c.server, 0)} | {fmt(c.postgres, 0)} "
            f"| {fmt(c.other, 0)} |"
        )
    seen = {}
    for r in out.results:
        if r.pgbench is not None:
            seen[r.pgbench.clients] = r.pgbench
    if seen:
        lines += [
            "",
            "| pgbench clients | threads | TPS | avg latency ms | transactions | failed "
            "| CPU busy | pgbench | postgres |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for n, b in sorted(seen.items()):
            lines.append(
                f"| {n} | {b.threads} | {fmt(b.tps)} | {fmt(b.latency_ms, 2)} "
                f"| {b.transactions:,} | {b.failed} | {fmt(b.cpu.busy, 0)} "
                f"| {fmt(b.cpu.client, 0)} | {fmt(b.cpu.postgres, 0)} |"
            )
    for r in out.results:
        if r.kill:
            lines += [
                "",
                f"Kill test ({r.backend}, {r.clients} clients): kill -9 of API worker "
                f"{r.kill.get('pid')} {r.kill.get('at_s', '?')} s into the run (workers "
                f"before {r.kill.get('workers_before')}, after {r.kill.get('workers_after')}). "
                f"Acknowledged {r.acknowledged:,}, in the ledger {r.server_charges:,} "
                f"(>= acknowledged: {'yes' if r.server_charges >= r.acknowledged else 'NO'}); "
                f"{r.in_doubt} requests in doubt, {r.resolved} of them charged once replayed; "
                f"socket errors {r.socket_errors}, statuses {r.statuses}.",
            ]
    return "\n".join(lines)


def medians(results: list[Result]) -> list[str]:
    """With --repeat: per scenario and client count, the median of the paired ratios (and
    the lowest and highest), the figure to hold against a target."""
    groups: dict[tuple[str, str, int], list[Result]] = {}
    for r in results:
        if r.pgbench is not None:
            groups.setdefault((r.backend, r.scenario, r.clients), []).append(r)
    lines = [
        "| Database | Scenario | Clients | runs | median ratio | lowest | highest "
        "| median p99 ms |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for (backend, scenario, clients), runs in groups.items():
        ratios = sorted(r.ratio for r in runs)
        p99 = statistics.median(r.p99_ms for r in runs)
        lines.append(
            f"| {backend} | {scenario} | {clients} | {len(runs)} "
            f"| {fmt(statistics.median(ratios), 3)} | {fmt(ratios[0], 3)} "
            f"| {fmt(ratios[-1], 3)} | {fmt(p99)} |"
        )
    return lines


def dump_json(path: Path, out: Outcome, args: argparse.Namespace) -> None:
    payload = {
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "results": [
            {**asdict(r), "ratio": None if math.isnan(r.ratio) else r.ratio} for r in out.results
        ],
        "skipped": out.skipped,
        "ledger": out.ledger,
        "problems": out.problems,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- main


def client_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or any(n < 1 or n > 256 for n in counts):
        raise argparse.ArgumentTypeError("client counts must be 1..256, comma-separated")
    return counts


def scenario_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"scenarios are {','.join(SCENARIOS)}; not {unknown}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per level")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per level")
    parser.add_argument("--clients", type=client_counts, default=[1, 8, 32])
    parser.add_argument("--scenarios", type=scenario_list, default=list(SCENARIOS))
    parser.add_argument("--workers", type=int, default=2, help="API processes (--workers)")
    parser.add_argument(
        "--job-workers", type=int, default=0, help="job worker processes (0: --no-worker)"
    )
    parser.add_argument("--sqlite-clients", type=int, default=8, help="clients of scenario e")
    parser.add_argument(
        "--sqlite-workers",
        type=int,
        default=0,
        help="API processes of scenario e (default: billfold serve's own default)",
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="charges per batch (d)")
    parser.add_argument(
        "--kill-test",
        action="store_true",
        help="also run scenario a at the largest client count with one API worker "
        "killed (kill -9) half-way",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per PostgreSQL scenario and client count, each paired with its own "
        "pgbench run; adds the median ratio (default 1: one pgbench run per client count)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the raw figures here")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--seconds must be 1..600 and --warmup 0..60")
    if not 1 <= args.workers <= 64 or not 0 <= args.job_workers <= 16:
        parser.error("--workers must be 1..64 and --job-workers 0..16")
    if not 1 <= args.repeat <= 50:
        parser.error("--repeat must be 1..50")
    if not 1 <= args.sqlite_clients <= 256 or not 1 <= args.batch_size <= 10_000:
        parser.error("--sqlite-clients must be 1..256 and --batch-size 1..10000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    run_tag = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="billfold-wrk-"))
    servers: list[WrkServer] = []
    out = Outcome()
    background: tuple[float, list[str]] = (math.nan, [])
    try:
        log(f"PostgreSQL {pg_version()} at {HOST}:{PG_PORT}; wrk {WRK}; work dir {workdir}")
        options, notes = serve_options(args)
        out.notes = [" ".join(options), *notes]
        log(f"billfold serve options: {options} {notes}")
        if args.kill_test and "--workers" not in options:
            out.problems.append("--kill-test needs `billfold serve --workers`: not available")
            args.kill_test = False
        elif args.kill_test and args.workers < 2:
            out.problems.append("--kill-test needs --workers >= 2 (a worker to kill)")
            args.kill_test = False
        background = background_load()
        bench_postgres(args, workdir, servers, run_tag, options, out)
        bench_sqlite(args, workdir, servers, run_tag, options, out)
    except BaseException:
        for server in servers:
            log(f"last lines of the {server.name} server's log:\n{server.tail(60)}")
        raise
    finally:
        for server in servers:
            try:
                server.stop()
            except Exception as exc:  # keep cleaning up
                log(f"could not stop the {server.name} server: {exc!r}")
        drop_database(BENCH_DB)
        drop_database(PGBENCH_DB)
        shutil.rmtree(workdir, ignore_errors=True)
    print(render(out, args, background))
    print()
    for message in out.skipped:
        print(f"- {message}")
    for backend, summary in out.ledger.items():
        print(
            f"- Ledger {backend}: {summary['accounts']} accounts, sum of balances "
            f"{summary['balances']} = funding {summary['funding']} - "
            f"{summary['acknowledged_charges']:,} x {CHARGE}: "
            f"{'yes' if summary['exact'] else 'NO'}"
        )
    problems = out.problems + [p for r in out.results for p in r.problems]
    if problems:
        print("Problems:")
        print("\n".join(f"- {line}" for line in problems))
    if args.json is not None:
        dump_json(args.json, out, args)
        log(f"raw figures written to {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

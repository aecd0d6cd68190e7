"""`billfold serve` as a process tree: N API processes, the job worker in a process of its
own, one admin key for all of them, metrics added up across processes, and nothing left
running after SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from billfold.api.embedded import local_socket
from tests.conftest import Receiver
from tests.helpers import Api

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

BILLFOLD = [sys.executable, "-m", "billfold.cli"]


@dataclass
class Served:
    process: subprocess.Popen[str]
    api: Api
    log: Path

    def descendants(self) -> dict[int, str]:
        """Every process below serve: pid → command line."""
        return descendants(self.process.pid)


def _ppid_and_state(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants(root: int) -> dict[int, str]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := _ppid_and_state(int(entry.name))) is not None:
            parents[int(entry.name)] = found[0]
    below: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
        below |= frontier
    return {pid: _cmdline(pid) for pid in below}


def alive(pid: int) -> bool:
    found = _ppid_and_state(pid)
    return found is not None and found[1] != "Z"


@contextmanager
def serving(
    tmp_path: Path, *args: str, env_extra: dict[str, str] | None = None
) -> Iterator[Served]:
    sock = local_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env.update(
        BILLFOLD_DATABASE_URL=f"sqlite:///{tmp_path / 'billfold.db'}",
        BILLFOLD_VAR_DIR=str(tmp_path / "var"),
        BILLFOLD_WEBHOOK_ALLOW_PRIVATE="true",
        TMPDIR=str(tmp_path),  # where serve makes its metrics directory
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    env.update(env_extra or {})
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [*BILLFOLD, "serve", "--port", str(port), "--no-demo", *args],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        admin_key = (tmp_path / "var" / "admin_key").read_text().strip()
        yield Served(process, Api(base, admin_key), log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def stop(served: Served) -> dict[int, str]:
    """SIGTERM serve; its exit and every process below it gone within seconds."""
    below = served.descendants()
    served.process.send_signal(signal.SIGTERM)
    served.process.wait(timeout=20)
    assert served.process.returncode == 0, served.log.read_text()[-3000:]
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in below) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {pid: cmd for pid, cmd in below.items() if alive(pid)}
    assert not left, left
    return below


def _job_workers(processes: dict[int, str]) -> list[int]:
    return [pid for pid, cmd in processes.items() if "billfold.cli worker" in cmd]


def _api_processes(processes: dict[int, str]) -> list[int]:
    return [pid for pid, cmd in processes.items() if "multiprocessing.spawn" in cmd]


def _metrics(api: Api) -> str:
    response = requests.get(f"{api.base_url}/metrics", headers=api.admin_headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def _healthz_count(text: str) -> float:
    prefix = (
        'billfold_http_request_duration_seconds_count{method="GET",route="/healthz",status="200"}'
    )
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_workers_are_processes_sharing_one_database(tmp_path: Path, receiver: Receiver) -> None:
    with serving(tmp_path, "--workers", "2") as served:
        api = served.api
        processes = served.descendants()
        assert len(_api_processes(processes)) == 2, processes
        assert len(_job_workers(processes)) == 1, processes
        metrics_dirs = list(tmp_path.glob("billfold-metrics-*"))
        assert len(metrics_dirs) == 1

        # Many concurrent requests, until both API processes have answered some (each
        # process writes its samples to files of its own, named after its pid). Ready
        # means one process answered /readyz: on a busy machine the other may still be
        # starting, so this waits for it by the clock, not by a count of rounds.
        sent = 0
        served_by: set[int] = set()
        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(8) as pool:
            while time.monotonic() < deadline:
                codes = list(
                    pool.map(
                        lambda _: requests.get(f"{api.base_url}/healthz", timeout=10).status_code,
                        range(16),
                    )
                )
                assert codes == [200] * 16
                sent += 16
                served_by = {
                    int(f.stem.rsplit("_", 1)[1]) for f in metrics_dirs[0].glob("histogram_*.db")
                }
                if len(served_by) >= 2:
                    break
        assert served_by == set(_api_processes(processes)), (served_by, processes)
        # A scrape, whichever process answers it, adds up every process's samples (a
        # request is observed just after its answer is sent: allow it a moment).
        deadline = time.monotonic() + 10
        while _healthz_count(_metrics(api)) < sent and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _healthz_count(_metrics(api)) >= sent

        # Writes from both API processes, and a job (a webhook delivery) that only the
        # job worker process can have run: the API processes run none.
        path = receiver.path()
        endpoint = api.admin_post(
            "/webhook-endpoints", {"url": receiver.url + path, "event_types": ["wallet.funded"]}
        )
        assert endpoint.status_code == 201, endpoint.text
        agents = [api.new_agent() for _ in range(4)]
        with ThreadPoolExecutor(4) as pool:
            funded = list(pool.map(lambda agent: agent.fund(10).status_code, agents))
        assert set(funded) <= {200, 201}, funded
        deadline = time.monotonic() + 30
        while len(receiver.at(path)) < 4:
            assert time.monotonic() < deadline, served.log.read_text()[-3000:]
            time.sleep(0.2)

        below = stop(served)
    assert set(_api_processes(below)) | set(_job_workers(below)) <= set(below)
    assert not list(tmp_path.glob("billfold-metrics-*"))  # cleaned up


def test_one_worker_serves_in_process_with_the_job_worker_beside_it(tmp_path: Path) -> None:
    with serving(tmp_path, "--workers", "1", "--job-workers", "2") as served:
        processes = served.descendants()
        assert not _api_processes(processes), processes
        assert len(_job_workers(processes)) == 2, processes
        for _ in range(3):
            assert requests.get(f"{served.api.base_url}/healthz", timeout=10).status_code == 200
        assert _healthz_count(_metrics(served.api)) >= 3
        stop(served)


def test_no_worker_means_no_job_process(tmp_path: Path) -> None:
    with serving(tmp_path, "--workers", "1", "--no-worker") as served:
        assert not _job_workers(served.descendants())
        stop(served)


def test_a_job_worker_goes_when_serve_is_killed(tmp_path: Path) -> None:
    """Not even SIGKILL, which serve cannot clean up after, leaves a job worker behind."""
    with serving(tmp_path, "--workers", "1") as served:
        (worker,) = _job_workers(served.descendants())
        served.process.kill()
        served.process.wait()
        deadline = time.monotonic() + 10
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker)


def test_on_sqlite_serve_runs_an_api_process_per_core_up_to_two(tmp_path: Path) -> None:
    """The processes' writers take turns at SQLite's writer gate; more than two only
    split the charges into smaller batches queueing for its one writer."""
    cores = min(os.cpu_count() or 1, 2)
    with serving(tmp_path, "--no-worker") as served:
        assert f"{cores} API, 0 job worker(s)" in served.log.read_text()
        if cores > 1:
            assert len(_api_processes(served.descendants())) == cores
        else:
            assert not _api_processes(served.descendants())
        assert requests.get(f"{served.api.base_url}/healthz", timeout=10).status_code == 200
        stop(served)


def test_sqlite_api_processes_charge_one_wallet_exactly(tmp_path: Path) -> None:
    """Two API processes on SQLite charging one wallet at once: every charge answered
    201 and on the books once, the balance exact and the ledger consistent."""
    with serving(tmp_path, "--workers", "2", "--no-worker") as served:
        api = served.api
        agent = api.new_agent()
        assert agent.fund(10).status_code in (200, 201)
        url = api.admin_url("/usage-charges")

        def charge(n: int) -> int:
            body = {"account_id": agent.account_id, "amount": "0.01", "usecase": "tokens"}
            headers = {**api.admin_headers, "Idempotency-Key": f"gate-{n}"}
            return requests.post(url, json=body, headers=headers, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(charge, range(240)))
        assert codes == [201] * 240
        assert agent.balance() == Decimal("7.60")
        assert api.ledger_check(agent.account_id)["consistent"] is True
        stop(served)

"""The job worker processes beside `billfold serve`'s API: each is `billfold worker`.

They share nothing with the API processes but the database (the job queue is a table),
so they start, crash and stop on their own. Started with serve, restarted if one dies,
and stopped when serve exits: SIGTERM (a worker finishes the jobs in hand), then SIGKILL
after a grace period. Each also watches its parent (`--parent-pid`), so not even a
SIGKILLed serve leaves one behind.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("billfold.serve")

# A worker that died sooner than this after its start is restarted only this long after
# it: a broken configuration fails slowly, not in a tight loop.
RESTART_DELAY_SECONDS = 5.0


class JobWorkers:
    def __init__(
        self,
        count: int,
        *,
        grace_seconds: float = 30.0,
        on_killed: Callable[[int], object] | None = None,
    ) -> None:
        self.count = count
        self.grace_seconds = grace_seconds
        # Called with the pid of a worker that had to be killed (its jobs handed back).
        self.on_killed = on_killed
        self._processes: list[tuple[subprocess.Popen[bytes], float]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [process.pid for process, _ in self._processes]

    def start(self) -> None:
        if self.count <= 0:
            return
        with self._lock:
            self._processes = [(self._spawn(), time.monotonic()) for _ in range(self.count)]
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="job-workers")
        self._watcher.start()

    @staticmethod
    def _spawn() -> subprocess.Popen[bytes]:
        # The API processes' metrics directory is theirs: a worker serves no /metrics.
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        command = [sys.executable, "-m", "billfold.cli", "worker", "--parent-pid", str(os.getpid())]
        process = subprocess.Popen(command, env=env)  # noqa: S603 - our own interpreter
        log.info("started job worker process [%d]", process.pid)
        return process

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            with self._lock:
                if self._stopping.is_set():
                    return
                for index, (process, started) in enumerate(self._processes):
                    if process.poll() is None:
                        continue
                    if time.monotonic() - started < RESTART_DELAY_SECONDS:
                        continue  # restarted on a later round
                    log.warning(
                        "job worker process [%d] exited (%s): restarting it",
                        process.pid,
                        process.returncode,
                    )
                    self._processes[index] = (self._spawn(), time.monotonic())

    def stop(self) -> None:
        """SIGTERM every worker, wait up to the grace period, SIGKILL what is left."""
        self._stopping.set()
        with self._lock:
            processes = [process for process, _ in self._processes]
            self._processes = []
        for process in processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + self.grace_seconds
        for process in processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                log.warning("job worker process [%d] did not stop: killing it", process.pid)
                process.kill()
                process.wait()
                if self.on_killed is not None:
                    try:
                        self.on_killed(process.pid)
                    except Exception:  # its leases run out instead
                        log.exception("could not hand back the jobs of [%d]", process.pid)
        if self._watcher is not None:
            self._watcher.join(timeout=5)

"""Job lanes: money work never waits behind webhook deliveries; deliveries run concurrently,
at most MAX_RUNNING_PER_KEY at a time per endpoint, enforced by the database."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from billfold.application.jobs import Worker
from billfold.clock import now
from billfold.jobs import service as jobs
from billfold.jobs.models import Job, Lane
from billfold.services import Services
from billfold.webhooks.models import WebhookDelivery
from tests.helpers import Api

SLOW_SECONDS = 2.0


@dataclass
class SlowReceiver:
    """Paths starting /slow answer after SLOW_SECONDS, others at once; it records how many
    requests each path has in flight at most."""

    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: Counter[str] = field(default_factory=Counter)
    most_in_flight: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)


@pytest.fixture
def slow_receiver() -> Iterator[SlowReceiver]:
    state = SlowReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            with state.lock:
                state.in_flight[self.path] += 1
                state.most_in_flight[self.path] = max(
                    state.most_in_flight[self.path], state.in_flight[self.path]
                )
            if self.path.startswith("/slow"):
                time.sleep(SLOW_SECONDS)
            with state.lock:
                state.in_flight[self.path] -= 1
                state.answered[self.path] += 1
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


def _endpoint(api: Api, url: str) -> str:
    response = api.admin_post("/webhook-endpoints", {"url": url, "event_types": ["*"]})
    assert response.status_code == 201, response.text
    endpoint_id: str = response.json()["data"]["id"]
    return endpoint_id


def _disable(api: Api, endpoint_id: str) -> None:
    response = api.session.delete(
        api.admin_url(f"/webhook-endpoints/{endpoint_id}"), headers=api.admin_headers
    )
    assert response.status_code == 200, response.text


def _deliveries(services: Services, endpoint_id: str) -> Counter[str]:
    with services.database.read() as session:
        rows = session.execute(
            select(WebhookDelivery.status, func.count())
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .group_by(WebhookDelivery.status)
        ).all()
    return Counter({status: count for status, count in rows})


def _until(condition: Callable[[], bool], *, within: float) -> float:
    """Seconds until `condition` held; fails after `within`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, "condition not reached in time"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_top_up_does_not_wait_behind_slow_deliveries(
    api: Api, services: Services, slow_receiver: SlowReceiver
) -> None:
    Worker(services).drain()  # nothing else due: only this test's work is measured
    slow = _endpoint(api, f"{slow_receiver.url}/slow-{uuid.uuid4().hex[:8]}")
    fast_path = f"/fast-{uuid.uuid4().hex[:8]}"
    fast = _endpoint(api, slow_receiver.url + fast_path)
    stop = threading.Event()
    worker = threading.Thread(
        target=Worker(services).run_forever, args=(stop,), kwargs={"poll_seconds": 0.1}
    )
    try:
        agent = api.new_agent()
        for _ in range(3):
            assert agent.fund(10).status_code == 200
        response = agent.put(
            "/wallet/auto-funding", {"auto_charge_amount": 25, "charge_threshold": 5}
        )
        assert response.status_code == 200, response.text
        backlog = _deliveries(services, slow)["pending"]
        assert backlog >= 12  # one after another: 24 s and more of slow receiver
        worker.start()
        # Every delivery to the fast endpoint arrives while the slow one is still busy.
        fast_total = sum(_deliveries(services, fast).values())
        _until(lambda: _deliveries(services, fast)["succeeded"] == fast_total, within=2.5)
        assert slow_receiver.answered[fast_path] == fast_total
        assert _deliveries(services, slow)["pending"] >= backlog - 4
        # A charge crosses the threshold: the top-up runs at once, deliveries or not.
        assert api.charge_usage(agent.account_id, 26).status_code == 201
        took = _until(lambda: agent.balance() == Decimal(4 + 25), within=3)
        assert took < 2
        assert _deliveries(services, slow)["pending"] > 0  # still working through them
        # Deliveries ran concurrently, but never more than two at once to one endpoint.
        slow_path = next(p for p in slow_receiver.most_in_flight if p.startswith("/slow"))
        assert slow_receiver.most_in_flight[slow_path] == jobs.MAX_RUNNING_PER_KEY
    finally:
        _disable(api, slow)
        _disable(api, fast)
        stop.set()
        if worker.is_alive():
            worker.join(timeout=30)
    assert not worker.is_alive()
    Worker(services).drain()  # the rest find their endpoint disabled and stop at once


@pytest.fixture
def kind(services: Services) -> Iterator[str]:
    """A job kind of this test's own; every job due before it, or in the time it looks
    ahead (other tests' retries, leases that run out), has run."""
    while Worker(services).drain(at=now() + 3 * jobs.LEASE):
        pass
    name = f"test.lanes.{uuid.uuid4().hex[:6]}"
    yield name
    with services.database.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.kind == name)
            .values(status="succeeded", locked_until=None, slot=None, finished_at=now())
        )


def _enqueue(services: Services, kind: str, count: int, **kwargs: Any) -> None:
    with services.database.transaction() as session:
        for _ in range(count):
            jobs.enqueue(session, kind=kind, **kwargs)


def _running(services: Services, kind: str) -> Counter[str | None]:
    with services.database.read() as session:
        keys = session.scalars(
            select(Job.concurrency_key).where(Job.kind == kind, Job.status == "running")
        )
        return Counter(keys)


def test_claims_respect_the_limit_per_key(services: Services, kind: str) -> None:
    busy, other = f"k:{uuid.uuid4().hex[:6]}", f"k:{uuid.uuid4().hex[:6]}"
    _enqueue(services, kind, 6, lane=Lane.WEBHOOKS, concurrency_key=busy)
    _enqueue(services, kind, 2, lane=Lane.WEBHOOKS, concurrency_key=other)
    _enqueue(services, kind, 2, lane=Lane.DEFAULT)
    claimed = []
    for worker_id in ("w1", "w2"):  # one job per key per claim
        with services.database.transaction() as session:
            got = jobs.claim(session, worker_id=worker_id, limit=50, lane=Lane.WEBHOOKS)
        assert len(got) == 2
        claimed += got
    assert _running(services, kind) == {busy: 2, other: 2}
    with services.database.transaction() as session:  # the keys are full: nothing more
        assert jobs.claim(session, worker_id="w3", limit=50, lane=Lane.WEBHOOKS) == []
    with services.database.transaction() as session:  # the other lane is not held up
        money = jobs.claim(session, worker_id="w3", limit=50, lane=Lane.DEFAULT)
    assert len(money) == 2
    # One finishes: exactly one more of its key may start.
    finished = next(j for j in claimed if j.id == min(c.id for c in claimed))
    with services.database.transaction() as session:
        assert jobs.succeed(session, finished, worker_id="w1")
    with services.database.transaction() as session:
        assert len(jobs.claim(session, worker_id="w3", limit=50, lane=Lane.WEBHOOKS)) == 1
    with services.database.transaction() as session:
        assert jobs.claim(session, worker_id="w3", limit=50, lane=Lane.WEBHOOKS) == []
    assert _running(services, kind)[busy] == 2
    # The database itself refuses a third running job in a taken slot of the key.
    with services.database.read() as session:
        queued = session.scalars(
            select(Job.id).where(Job.concurrency_key == busy, Job.status == "queued").limit(1)
        ).one()
        taken = session.scalars(
            select(Job.slot).where(Job.concurrency_key == busy, Job.status == "running")
        ).first()
    with pytest.raises(IntegrityError), services.database.transaction() as session:
        session.execute(update(Job).where(Job.id == queued).values(status="running", slot=taken))


def test_an_expired_lease_is_taken_over_in_its_own_slot(services: Services, kind: str) -> None:
    key = f"k:{uuid.uuid4().hex[:6]}"
    _enqueue(services, kind, 3, lane=Lane.WEBHOOKS, concurrency_key=key)
    dead = []
    for _ in range(3):
        with services.database.transaction() as session:
            dead += jobs.claim(session, worker_id="dead", limit=50, lane=Lane.WEBHOOKS)
    assert len(dead) == 2
    later = now() + jobs.LEASE + jobs.LEASE
    again = []
    for _ in range(3):
        with services.database.transaction() as session:
            again += jobs.claim(session, worker_id="alive", limit=50, lane=Lane.WEBHOOKS, at=later)
    # The two abandoned jobs are taken over; the third still waits for a free slot.
    assert sorted(j.id for j in again) == sorted(j.id for j in dead)
    assert _running(services, kind) == {key: 2}
    with services.database.read() as session:
        slots = session.execute(
            select(Job.locked_by, Job.slot).where(Job.kind == kind, Job.status == "running")
        ).all()
    assert sorted(slots) == [("alive", 0), ("alive", 1)]


def test_concurrent_claimers_never_exceed_the_limit(services: Services, kind: str) -> None:
    keys = [f"k:{uuid.uuid4().hex[:6]}" for _ in range(4)]
    with services.database.transaction() as session:
        for round_ in range(6):  # interleaved, so each claimer's batch spans several keys
            for key in keys if round_ % 2 else reversed(keys):
                jobs.enqueue(session, kind=kind, lane=Lane.WEBHOOKS, concurrency_key=key)
    claims: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claimer(number: int) -> None:
        start.wait()
        try:
            for _ in range(6):
                with services.database.transaction() as session:
                    got = jobs.claim(
                        session, worker_id=f"w{number}", limit=1 + number % 4, lane=Lane.WEBHOOKS
                    )
                with lock:
                    claims.extend(j.id for j in got)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(claims) == len(set(claims))
    assert _running(services, kind) == dict.fromkeys(keys, jobs.MAX_RUNNING_PER_KEY)

"""GET /metrics: request latency by route template, refusals and usage charges, the job
backlog read from the database, and the admin key in front of it all."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import requests
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete

from billfold.api.app import create_app
from billfold.clock import wall_now
from billfold.jobs import service as jobs
from billfold.jobs.models import Job, Lane
from billfold.services import Services
from tests.conftest import Receiver
from tests.helpers import Api, assert_error

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(api: Api) -> Samples:
    response = requests.get(f"{api.base_url}/metrics", headers=api.admin_headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_latency_is_labelled_by_route_template_not_raw_path(api: Api) -> None:
    agent = api.new_agent()
    template = "/api/admin/v1/accounts/{account_id}"
    before = scrape(api)
    for _ in range(3):
        assert api.admin_get(f"/accounts/{agent.account_id}").status_code == 200
    missing = agent.get("/subscriptions/sub_doesnotexist")
    assert missing.status_code == 404
    assert requests.get(f"{api.base_url}/no/such/{agent.account_id}", timeout=10).status_code == 404
    after = scrape(api)

    count = "billfold_http_request_duration_seconds_count"
    ok = {"method": "GET", "route": template, "status": "200"}
    assert value(after, count, **ok) - value(before, count, **ok) == 3
    assert value(after, "billfold_http_request_duration_seconds_bucket", le="+Inf", **ok) >= 3
    assert value(after, "billfold_http_request_duration_seconds_sum", **ok) > 0
    sub = {
        "method": "GET",
        "route": "/api/agents/v1/subscriptions/{subscription_id}",
        "status": "404",
    }
    assert value(after, count, **sub) - value(before, count, **sub) == 1
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "404"}
    assert value(after, count, **unmatched) - value(before, count, **unmatched) == 1
    routes = {dict(labels).get("route", "") for _, labels in after}
    assert not any(agent.account_id in route for route in routes), routes


def test_usage_charges_and_refusals_are_counted_by_outcome(api: Api) -> None:
    agent = api.new_agent()
    agent.fund(10)
    route = "/api/admin/v1/usage-charges"
    before = scrape(api)
    assert api.charge_usage(agent.account_id, "2", key="m-1").status_code in {200, 201}
    assert api.charge_usage(agent.account_id, "2", key="m-1").status_code in {200, 201}  # replay
    assert_error(api.charge_usage(agent.account_id, "500", key="m-2"), 402, "insufficient_funds")
    assert_error(api.charge_usage(agent.account_id, "500"), 402, "insufficient_funds")  # no key
    after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("billfold_usage_charges_total", outcome="charged") == 1
    assert delta("billfold_usage_charges_total", outcome="insufficient_funds") == 2
    refused = {"code": "insufficient_funds", "route": route}
    assert delta("billfold_refusals_total", **refused) == 2


def test_job_backlog_gauges_reflect_a_due_job(api: Api, services: Services) -> None:
    def backlog() -> tuple[float, float]:
        samples = scrape(api)
        return (
            value(samples, "billfold_jobs_due", lane="webhooks"),
            value(samples, "billfold_jobs_oldest_due_age_seconds", lane="webhooks"),
        )

    # Far older than any job another test leaves behind, so the age gauge is ours alone.
    ancient = timedelta(days=1000)
    with _job(services, run_at=wall_now() - ancient):
        assert backlog()[1] >= ancient.total_seconds()
    assert backlog()[1] < ancient.total_seconds()

    # The count shares the lane with other tests' webhook retries, which fall due on their
    # own clock; an attempt counts only when nothing else moved between its scrapes.
    def counts_one_due_job() -> bool:
        due_before, _ = backlog()
        with _job(services, run_at=wall_now() - timedelta(hours=1)):
            due, _ = backlog()
        return due == due_before + 1 and backlog()[0] == due_before

    assert any(counts_one_due_job() for _ in range(5))
    for _ in range(5):
        due_before, _ = backlog()
        with _job(services, run_at=wall_now() + timedelta(days=30)):
            due, _ = backlog()
        if due == due_before:  # not due yet: no backlog
            break
    else:
        raise AssertionError("a job due in 30 days was counted as due")


@contextmanager
def _job(services: Services, **when: object) -> Iterator[None]:
    kind = "test.metrics_probe"  # no handler: removed before any worker could claim it
    with services.database.transaction() as session:
        jobs.enqueue(session, kind=kind, lane=Lane.WEBHOOKS, **when)  # type: ignore[arg-type]
    try:
        yield
    finally:
        with services.database.transaction() as session:
            session.execute(delete(Job).where(Job.kind == kind))


def test_metrics_need_the_admin_key(api: Api) -> None:
    url = f"{api.base_url}/metrics"
    assert_error(requests.get(url, timeout=10), 401, "unauthenticated")
    wrong = {"Authorization": "Bearer bf_admin_wrong"}
    assert_error(requests.get(url, headers=wrong, timeout=10), 401, "unauthenticated")
    assert requests.get(url, headers=api.admin_headers, timeout=10).status_code == 200
    assert (
        "/metrics" not in requests.get(f"{api.base_url}/openapi.json", timeout=10).json()["paths"]
    )


def test_metrics_can_be_public(services: Services) -> None:
    public = dataclasses.replace(
        services, settings=services.settings.model_copy(update={"metrics_public": True})
    )
    with TestClient(create_app(public)) as client:
        client.get("/healthz")
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    samples = parse(response.text)
    assert value(samples, "billfold_jobs_running", lane="default") >= 0
    assert any(name == "billfold_http_request_duration_seconds_count" for name, _ in samples)


def test_attention_gauges_count_disabled_endpoints(api: Api, receiver: Receiver) -> None:
    """The gauges alerts watch: a webhook endpoint disabled shows in
    billfold_webhook_endpoints_disabled; the others are present."""
    before = scrape(api)
    for name in (
        "billfold_payment_attempts_pending",
        "billfold_payment_attempts_unknown",
        "billfold_subscriptions_past_due",
        "billfold_subscriptions_unpaid",
    ):
        assert (name, frozenset()) in before, name
    created = api.admin_post("/webhook-endpoints", {"url": f"{receiver.url}/attention"})
    assert created.status_code == 201, created.text
    endpoint_id = created.json()["data"]["id"]
    disabled = api.session.put(
        api.admin_url(f"/webhook-endpoints/{endpoint_id}"),
        json={"enabled": False},
        headers=api.admin_headers,
        timeout=10,
    )
    assert disabled.status_code == 200, disabled.text
    after = value(scrape(api), "billfold_webhook_endpoints_disabled")
    assert after == value(before, "billfold_webhook_endpoints_disabled") + 1
    api.session.delete(
        api.admin_url(f"/webhook-endpoints/{endpoint_id}"), headers=api.admin_headers
    )

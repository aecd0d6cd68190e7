"""OpenTelemetry traces (the `otel` extra): a span per request named by its route, spans
for the database statements and the payment processor's calls inside it, exported to the
in-memory exporter a test hands `tracing.setup`."""

from __future__ import annotations

from pathlib import Path

import requests
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from billfold import tracing
from billfold.api.app import create_app
from billfold.api.embedded import local_socket, serving
from billfold.application.container import build_services
from billfold.config import Settings
from billfold.migrate import upgrade
from tests.conftest import ADMIN_KEY
from tests.helpers import Api


def test_requests_database_statements_and_processor_calls_are_traced(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'traced.db'}"
    upgrade(url)
    settings = Settings(database_url=url, admin_key=ADMIN_KEY, var_dir=tmp_path / "var")
    services = build_services(settings, ADMIN_KEY)
    exporter = InMemorySpanExporter()
    assert tracing.setup(services, exporter=exporter)
    try:
        with serving(create_app(services), local_socket()) as base:
            api = Api(base, ADMIN_KEY)
            agent = api.new_agent()
            assert agent.fund(10).status_code == 200
            assert api.charge_usage(agent.account_id, "1").status_code == 201
            signed = requests.get(f"{base}/invoices/in_x/pdf?expires=1&signature=s3cr3tsig")
            assert signed.status_code in (403, 404, 410, 422)
    finally:
        tracing.shutdown()
    spans = exporter.get_finished_spans()
    servers = {s.name: s for s in spans if s.kind == SpanKind.SERVER}
    assert "POST /api/agents/v1/wallet/fund" in servers, sorted(servers)
    assert "POST /api/admin/v1/usage-charges" in servers, sorted(servers)
    fund = servers["POST /api/agents/v1/wallet/fund"]
    inside = [s for s in spans if s.context.trace_id == fund.context.trace_id]
    charges = [s for s in inside if s.name == "processor.charge"]
    assert charges and charges[0].attributes["billfold.processor"] == "SandboxProcessor"
    statements = [s for s in inside if (s.attributes or {}).get("db.system") == "sqlite"]
    assert statements, sorted({s.name for s in inside})
    # A signed link's signature is not in any span (as in no log line).
    recorded = [str(value) for s in spans for value in (s.attributes or {}).values()]
    assert any("signature=[secret]" in value for value in recorded)
    assert not any("s3cr3tsig" in value for value in recorded)


def test_without_setup_nothing_is_traced() -> None:
    assert tracing.provider() is None
    with tracing.span("anything", n=1) as current:
        assert current is None

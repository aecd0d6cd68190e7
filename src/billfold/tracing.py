"""OpenTelemetry traces, optional (`pip install 'billfold[otel]'`): a span per HTTP request
(named by its route template), per database statement (SQLAlchemy's, and the usage
writer's batches) and per payment-processor call, exported over OTLP/HTTP when
BILLFOLD_TRACING=otlp (the exporter reads the standard OTEL_EXPORTER_OTLP_* variables).

`setup(services)` is called once per process before the app is built; without the extra
installed, or with tracing off, everything here does nothing and costs nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from billfold.logs import redact

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from billfold.services import Services

log = logging.getLogger(__name__)

# The processor's calls that get a span each (what `billfold.processors.base.Processor`
# declares).
PROCESSOR_CALLS = (
    "create_customer",
    "create_setup_intent",
    "retrieve_payment_method",
    "attach_payment_method",
    "detach_payment_method",
    "charge",
    "charge_many",
    "refund",
    "find_charge",
    "tokenize_card",
    "create_hosted_checkout",
    "retrieve_hosted_checkout",
)

_provider: TracerProvider | None = None


def setup(services: Services, exporter: SpanExporter | None = None) -> bool:
    """Trace this process: with `exporter` (a test's in-memory one, spans exported as they
    end), else over OTLP if BILLFOLD_TRACING=otlp. False (and nothing done) otherwise."""
    global _provider
    if exporter is None and services.settings.tracing != "otlp":
        return False
    try:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        log.warning("BILLFOLD_TRACING is set but the otel extra is not installed: no traces")
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": "billfold"}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    engines = {services.database.engine, services.database.read_engine}
    for engine in engines:
        # Its declared range stops below SQLAlchemy 2.1; the engine events it listens to
        # (before/after_cursor_execute) are the same in 2.1, as tests/test_tracing.py shows.
        SQLAlchemyInstrumentor().instrument(
            engine=engine, tracer_provider=provider, skip_dep_check=True
        )
    _trace_processor(services.processor)
    _provider = provider
    return True


def provider() -> TracerProvider | None:
    """The process's tracer provider, if `setup` made one."""
    return _provider


def shutdown() -> None:
    """Flush and forget the provider (a test's, or at exit)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
    _provider = None


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A span around a block (nothing when tracing is off)."""
    if _provider is None:
        return nullcontext()
    return _span(name, attributes)


@contextmanager
def _span(name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    assert _provider is not None
    with _provider.get_tracer("billfold").start_as_current_span(name) as current:
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(key, value)
        yield current


def redact_span_urls(span: Any, scope: Any) -> None:
    """A request span's URL attributes with their secrets redacted (a signed link's
    signature, a token in a query string), as the log lines have them: the instrumentation
    records the full URL before this hook runs, so the hook writes over it."""
    attributes = getattr(span, "attributes", None) or {}
    for key in ("http.url", "http.target", "url.full", "url.query"):
        value = attributes.get(key)
        if isinstance(value, str):
            span.set_attribute(key, redact(value))


def _trace_processor(processor: object) -> None:
    """Each processor call in a span `processor.<call>`: the instance's methods wrapped
    (its class is untouched, so isinstance checks still see a SandboxProcessor)."""
    kind = type(processor).__name__
    for name in PROCESSOR_CALLS:
        method = getattr(processor, name, None)
        if callable(method):
            setattr(processor, name, _traced(method, f"processor.{name}", kind))


def _traced(method: Callable[..., Any], name: str, kind: str) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with span(name, **{"billfold.processor": kind}):
            return method(*args, **kwargs)

    return call


__all__ = ["PROCESSOR_CALLS", "provider", "redact_span_urls", "setup", "shutdown", "span"]

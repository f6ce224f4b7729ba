"""OpenTelemetry set-up from the standard `OTEL_*` environment variables (`TelemetrySettings`).

Tracing is off unless configured: set `OTEL_TRACES_EXPORTER=otlp` (with `OTEL_EXPORTER_OTLP_ENDPOINT`) or
`OTEL_TRACES_EXPORTER=console`, or just `OTEL_EXPORTER_OTLP_ENDPOINT`. `OTEL_SDK_DISABLED=true` wins. The
exporter reads its own options (endpoint, headers, protocol) from the environment, as the SDK documents.
"""

from __future__ import annotations

import threading

from opentelemetry import trace

from arbiter.config.typed_settings import arbiter_settings

_lock = threading.Lock()
_configured = False


def tracing_requested() -> bool:
    return arbiter_settings().telemetry.tracing_requested


def setup_tracing(*, service_name: str) -> bool:
    """Install a tracer provider and Django instrumentation once per process; return whether tracing is on."""
    global _configured
    with _lock:
        if _configured:
            return True
        telemetry = arbiter_settings().telemetry
        if not telemetry.tracing_requested:
            return False
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

        provider = TracerProvider(
            resource=Resource.create({"service.name": telemetry.service_name or service_name})
        )
        exporter: SpanExporter
        if telemetry.traces_exporter == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)

        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument()
        _configured = True
        return True


def tracer(name: str = "arbiter") -> trace.Tracer:
    return trace.get_tracer(name)

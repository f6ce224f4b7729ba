"""OpenTelemetry set-up from the standard `OTEL_*` environment variables.

Tracing is off unless configured: set `OTEL_TRACES_EXPORTER=otlp` (with `OTEL_EXPORTER_OTLP_ENDPOINT`) or
`OTEL_TRACES_EXPORTER=console`, or just `OTEL_EXPORTER_OTLP_ENDPOINT`. `OTEL_SDK_DISABLED=true` wins.
"""

from __future__ import annotations

import os
import threading

from opentelemetry import trace

_lock = threading.Lock()
_configured = False


def tracing_requested() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").lower()
    if exporter in ("otlp", "console"):
        return True
    return exporter != "none" and bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup_tracing(*, service_name: str) -> bool:
    """Install a tracer provider and Django instrumentation once per process; return whether tracing is on."""
    global _configured
    with _lock:
        if _configured:
            return True
        if not tracing_requested():
            return False
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

        os.environ.setdefault("OTEL_SERVICE_NAME", service_name)
        provider = TracerProvider(resource=Resource.create({"service.name": os.environ["OTEL_SERVICE_NAME"]}))
        exporter: SpanExporter
        if os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "console":
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

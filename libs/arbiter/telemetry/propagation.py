"""W3C trace context across events: what a publisher writes into an event's `traceparent`, and the context
a consumer continues from it. OpenTelemetry's TraceContext propagator does the formatting and parsing."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"

_propagator = TraceContextTextMapPropagator()
_ids = RandomIdGenerator()


def current_traceparent() -> str:
    """The W3C trace context of the active span; a fresh, unsampled one when there is none, so that the
    event and everything it causes still share one trace id in the logs."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    if TRACEPARENT not in carrier:
        fresh = trace.SpanContext(
            trace_id=_ids.generate_trace_id(),
            span_id=_ids.generate_span_id(),
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
        )
        _propagator.inject(carrier, context=trace.set_span_in_context(trace.NonRecordingSpan(fresh)))
    return carrier[TRACEPARENT]


def context_from_traceparent(traceparent: str | None) -> Context | None:
    """The context to continue a trace from (None without a usable `traceparent`: a new trace starts)."""
    if not traceparent:
        return None
    context = _propagator.extract({TRACEPARENT: traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None

"""An event's `traceparent`: written from the active span, and continued by whoever handles the event."""

from __future__ import annotations

import re

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from arbiter.telemetry.propagation import context_from_traceparent, current_traceparent

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def test_the_active_span_is_written_in_w3c_form() -> None:
    with TracerProvider().get_tracer("test").start_as_current_span("publish") as span:
        written = current_traceparent()
    context = span.get_span_context()
    assert written == f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    assert context.trace_flags.sampled


def test_without_a_span_each_event_gets_a_fresh_unsampled_trace() -> None:
    first, second = current_traceparent(), current_traceparent()
    first_match, second_match = TRACEPARENT.match(first), TRACEPARENT.match(second)
    assert first_match and second_match
    assert first_match.group(3) == "00"
    assert first_match.group(1) != second_match.group(1)


def test_a_consumer_continues_the_trace_it_was_given() -> None:
    written = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    context = context_from_traceparent(written)
    assert context is not None
    parent = trace.get_current_span(context).get_span_context()
    assert (parent.trace_id, parent.span_id, parent.is_remote) == (
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        True,
    )
    with TracerProvider().get_tracer("test").start_as_current_span("handle", context=context) as span:
        assert span.get_span_context().trace_id == parent.trace_id


def test_a_missing_or_malformed_traceparent_starts_a_new_trace() -> None:
    assert context_from_traceparent(None) is None
    assert context_from_traceparent("") is None
    assert context_from_traceparent("not-a-traceparent") is None
    assert context_from_traceparent("00-" + "0" * 32 + "-" + "0" * 16 + "-01") is None  # all-zero ids

"""Structured logs: one JSON object per line, with the active trace id when tracing is on.

Every line has `time` (UTC, milliseconds), `level`, `logger` and `message`; then `trace_id` inside a span,
the `extra={...}` fields of a standard-library call (or the key-value pairs of a structlog call), and
`exception` with the traceback. Standard-library loggers and `structlog.get_logger()` write the same lines:
`JsonFormatter` (named by Django's `LOGGING`) is structlog's `ProcessorFormatter`, and structlog is set up
to hand its events to the standard-library handlers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger


def _time(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # When the record was made, not when it was formatted (structlog's TimeStamper stamps the latter).
    record = event_dict.get("_record")
    created = datetime.fromtimestamp(record.created, UTC) if record is not None else datetime.now(UTC)
    event_dict["time"] = created.isoformat(timespec="milliseconds")
    return event_dict


def _trace_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
    return event_dict


# Run on every line: those from standard-library loggers and those from structlog loggers.
_SHARED: list[Processor] = [
    _time,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    _trace_id,
    structlog.stdlib.ExtraAdder(),
]


class JsonFormatter(structlog.stdlib.ProcessorFormatter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("foreign_pre_chain", _SHARED)
        kwargs.setdefault(
            "processors",
            [
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.EventRenamer("message"),
                structlog.processors.JSONRenderer(ensure_ascii=False, default=repr),
            ],
        )
        super().__init__(*args, **kwargs)
        configure_structlog()


def configure_structlog() -> None:
    """Route `structlog.get_logger()` events through the standard-library handlers (and so `JsonFormatter`)."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

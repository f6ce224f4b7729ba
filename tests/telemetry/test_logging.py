"""Log lines are one JSON object each, with the same fields from standard-library and structlog loggers."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from arbiter.telemetry.logging import JsonFormatter


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("arbiter.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield stream
    logger.removeHandler(handler)
    logger.propagate = True


def _read(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_standard_library_line_has_the_documented_fields(lines: io.StringIO) -> None:
    before = datetime.now(UTC)
    logging.getLogger("arbiter.test").warning(
        "relay %s is slow", "training", extra={"alias": "training", "pending": 3, "topics": ["a", "b"]}
    )
    (line,) = _read(lines)
    assert set(line) == {"time", "level", "logger", "message", "alias", "pending", "topics"}
    assert line["message"] == "relay training is slow"
    assert line["level"] == "warning" and line["logger"] == "arbiter.test"
    assert line["alias"] == "training" and line["pending"] == 3 and line["topics"] == ["a", "b"]
    stamped = datetime.fromisoformat(str(line["time"]))
    assert stamped.tzinfo is not None and abs((stamped - before).total_seconds()) < 5
    assert len(str(line["time"]).split(".")[1]) == len("123+00:00")  # milliseconds


def test_exceptions_and_the_trace_id_are_included(lines: io.StringIO) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        try:
            raise ValueError("bad row")
        except ValueError:
            logging.getLogger("arbiter.test").exception("import failed")
    (line,) = _read(lines)
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["level"] == "error"
    assert "Traceback" in str(line["exception"]) and "ValueError: bad row" in str(line["exception"])


def test_structlog_loggers_write_the_same_line(lines: io.StringIO) -> None:
    structlog.get_logger("arbiter.test").info("snapshot built", rows=12)
    (line,) = _read(lines)
    assert set(line) == {"time", "level", "logger", "message", "rows"}
    assert line["message"] == "snapshot built" and line["rows"] == 12 and line["logger"] == "arbiter.test"

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

logger = logging.getLogger("arbiter.request")


class RequestLogMiddleware:
    """One structured line per request: method, path (no query string: it may carry secrets), status, time."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        log_request(request, response, started)
        return response


def log_request(request: HttpRequest, response: HttpResponse, started: float) -> None:
    """The request's line (`started`: its `time.perf_counter()` when it arrived); health checks and static
    files are not logged."""
    if request.path not in ("/healthz", "/readyz") and not request.path.startswith("/static/"):
        logger.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )

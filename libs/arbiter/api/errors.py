"""One error shape for every API answer: `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    """An error with a stable machine-readable code; raise it from logic or views."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status
        self.error_code = code
        self.message = message
        self.details = details
        # Sent with the answer, e.g. `Retry-After` on a 429.
        self.headers = dict(headers or {})


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details if details is not None else {}}}


_DEFAULT_CODES = {
    400: "invalid",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "throttled",
}


def _validation_message(detail: Any, prefix: str = "") -> str:
    """The first field error as a sentence that names the field, e.g. `name: This field is required.`"""
    if isinstance(detail, dict):
        for key, value in detail.items():
            field = key if key != "non_field_errors" else ""
            name = f"{prefix}.{field}" if prefix and field else (field or prefix)
            return _validation_message(value, name)
    if isinstance(detail, list) and detail:
        return _validation_message(detail[0], prefix)
    return f"{prefix}: {detail}" if prefix else str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    from arbiter.api.idempotency import IdempotentReplay, replay_response

    if isinstance(exc, IdempotentReplay):
        return replay_response(exc.record)
    if isinstance(exc, ApiError):
        return Response(
            error_body(exc.error_code, exc.message, exc.details), status=exc.status_code, headers=exc.headers
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        body = error_body("invalid", _validation_message(exc.detail), exc.detail)
    elif isinstance(exc, exceptions.ParseError):
        body = error_body("malformed_request", str(exc.detail))
    else:
        code = getattr(exc, "default_code", None) or _DEFAULT_CODES.get(response.status_code, "error")
        if response.status_code == 404:
            code = "not_found"
        detail = getattr(exc, "detail", str(exc))
        body = error_body(str(code), str(detail))
    response.data = body
    return response


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/v1/")) or "application/json" in request.headers.get(
        "Accept", ""
    )


def _page_or_json(request: HttpRequest, status_code: int, code: str, message: str) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(error_body(code, message), status=status_code)
    return TemplateResponse(
        request, "console/error.html", {"status": status_code, "message": message}, status=status_code
    ).render()


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _page_or_json(
        request, status.HTTP_400_BAD_REQUEST, "invalid", "The request could not be understood."
    )


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _page_or_json(request, status.HTTP_403_FORBIDDEN, "permission_denied", "You may not do that.")


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _page_or_json(request, status.HTTP_404_NOT_FOUND, "not_found", "Nothing here.")


def server_error(request: HttpRequest) -> HttpResponse:
    return _page_or_json(
        request, status.HTTP_500_INTERNAL_SERVER_ERROR, "server_error", "Something went wrong on our side."
    )

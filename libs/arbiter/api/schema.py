"""The OpenAPI contract's shared pieces: the security schemes, the error shape and which errors each operation declares.

`AutoSchema` is drf-spectacular's, plus the error answers every operation can give (derived from what the
operation takes: a body or query parameters can be invalid, a path can name something missing, a caller can lack
a scope) and the `Idempotency-Key` header of org-scoped POSTs. Views add the errors only they give (409, 413,
429, ...) with `error_responses(...)` in `extend_schema(responses=...)`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.plumbing import ComponentRegistry
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from arbiter.api.idempotency import HEADER as IDEMPOTENCY_HEADER


class ApiKeyScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "arbiter.tenancy.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "API key",
            "description": "An org's API key (`arb_...`): `Authorization: Bearer <key>`. Its scopes decide what "
            "it may do; it is shown once, when created.",
        }


class SessionScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "arbiter.tenancy.authentication.SessionAuthentication"
    name = "session"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": settings.SESSION_COOKIE_NAME,
            "description": "A person signed in to the console; unsafe methods also need the CSRF token.",
        }


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable and machine-readable, e.g. `invalid`, `not_found`.")
    message = serializers.CharField(
        help_text="A sentence for people; for bad input it names the field first."
    )
    details = serializers.JSONField(
        help_text="More about the error: for invalid input, the messages of each field by name."
    )


class ErrorSerializer(serializers.Serializer):
    """Every error the API answers: `{"error": {"code", "message", "details"}}`."""

    error = ErrorDetailSerializer()


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid input: `message` names the field, `details` holds each field's messages.",
    401: "No credentials, or an unknown, revoked or expired API key.",
    402: "A quota is used up.",
    403: "The caller may not do this: the API key lacks the scope it needs, or the member's role does.",
    404: "Nothing here, or it belongs to another org (the two answer alike).",
    409: "Conflicts with the current state (or a request with the same Idempotency-Key is still running).",
    413: "The request body is over the limit; `details` gives the limit.",
    415: "The body's Content-Type is not one this operation reads.",
    422: "This Idempotency-Key was already used for a different request.",
    429: "Too many requests, or a free allowance is used up.",
    503: "The model cannot answer now (its artifact is missing or failed to load); `message` says why.",
}


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """`responses` entries for errors an operation gives beyond those `AutoSchema` derives."""
    return {code: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[code]) for code in codes}


IDEMPOTENCY_PARAMETER = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Any unique string (at most 255 characters): a retry with the same key returns the first "
    "answer and does nothing twice.",
)


class AutoSchema(SpectacularAutoSchema):
    def get_override_parameters(self) -> list[Any]:
        parameters = list(super().get_override_parameters())
        if self.method == "POST" and _takes_idempotency_key(self.view):
            parameters.append(IDEMPOTENCY_PARAMETER)
        return parameters

    def get_operation(
        self, path: str, path_regex: str, path_prefix: str, method: str, registry: ComponentRegistry
    ) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = super().get_operation(
            path, path_regex, path_prefix, method, registry
        )
        if operation is None:
            return None
        responses = operation["responses"]
        for code in self._derived_errors(operation):
            responses.setdefault(
                str(code),
                self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[code]),
                    str(code),
                    ("application/json",),
                ),
            )
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _derived_errors(self, operation: dict[str, Any]) -> list[int]:
        parameters = operation.get("parameters", [])
        codes = []
        has_body = "requestBody" in operation
        if has_body or any(p["in"] in ("query", "header") for p in parameters):
            codes.append(400)
        security = operation.get("security", [])
        if security and {} not in security:
            codes += [401, 403]
        if any(p["in"] == "path" for p in parameters):
            codes.append(404)
        if has_body:
            codes.append(415)
        if any(p["in"] == "header" and p["name"] == IDEMPOTENCY_HEADER for p in parameters):
            codes += [409, 422]
        return codes


def _takes_idempotency_key(view: Any) -> bool:
    from arbiter.tenancy.viewsets import OrgScopedViewSet

    return isinstance(view, OrgScopedViewSet)

"""The base of the compatibility endpoints (`/v1/...`): authenticated by an API key, the key's org in scope.

There is no org in these paths: the key decides it. Every service that answers an OpenAI- or Mistral-shaped
endpoint builds on `KeyScopedView`, so the rules are the same wherever the route table sends the request.

Errors keep Arbiter's body (`{"error": {"code", "message", "details"}}`). A 422 raised with `invalid_at()`
also carries FastAPI's `{"detail": [{"loc", "msg", "type"}]}`, which is what the Mistral SDK reads from a 422
(`HTTPValidationError`); the OpenAI SDK reads `error.message`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import Token
from typing import Any

from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from arbiter.api.errors import ApiError
from arbiter.api.parsers import JSONParser
from arbiter.tenancy.authentication import ApiKeyAuthentication
from arbiter.tenancy.models import ApiKey
from arbiter.tenancy.scopes import holds
from arbiter.tenancy.scoping import reset_org_scope, set_org_scope


def invalid_at(loc: Sequence[str | int], message: str, *, code: str = "invalid") -> ApiError:
    """A 422 naming where the problem is: `loc` as FastAPI gives it (`["body", "training_files", 0]`)."""
    where = ".".join(str(part) for part in loc if part != "body")
    text = f"{where}: {message}" if where else message
    return ApiError(
        status=422,
        code=code,
        message=text,
        details={"detail": [{"loc": list(loc), "msg": text, "type": "value_error"}]},
    )


class KeyScopedView(APIView):
    """Authenticated by an API key only; the key must hold `read_scope` (GET) or `write_scope` (anything else);
    its org is in scope."""

    authentication_classes = [ApiKeyAuthentication]
    parser_classes = [JSONParser]
    read_scope = "inference"
    write_scope = "inference"
    _scope_token: Token[int | None] | None = None

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        key = request.auth
        assert isinstance(key, ApiKey)
        scope = self.read_scope if request.method in ("GET", "HEAD", "OPTIONS") else self.write_scope
        if not holds(frozenset(key.scopes), scope):
            raise exceptions.PermissionDenied(
                f"This needs the '{scope}' scope, which the API key does not hold."
            )
        self._scope_token = set_org_scope(key.org_id)

    @property
    def org_id(self) -> int:
        key = self.request.auth
        assert isinstance(key, ApiKey)
        return int(key.org_id)

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if isinstance(exc, ApiError) and isinstance(exc.details, dict) and "detail" in exc.details:
            response.data = {**response.data, "detail": exc.details["detail"]}
        return response

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        token = self._scope_token
        if token is not None:
            reset_org_scope(token)
            self._scope_token = None
        return super().finalize_response(request, response, *args, **kwargs)

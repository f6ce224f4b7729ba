"""The one base viewset for org-scoped resources.

It takes the org from the URL (`<org>` = slug), checks the caller holds the scope the method needs, sets
the org scope for the request (so `OrgScopedModel.objects` only sees this org), and answers 404 for
"missing" and "not yours" alike. Subclasses implement `safely_get_queryset`; anything unscoped is spelled
`dangerously_...`.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from rest_framework import exceptions, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from arbiter.api.idempotency import idempotency_begin, idempotency_finish
from arbiter.api.metadata import ApiMetadata
from arbiter.api.models import IdempotencyRecord
from arbiter.api.parsers import API_PARSERS, refuse_unstorable_text
from arbiter.config.services import db_alias
from arbiter.tenancy.access import OrgAccess, resolve_org_access
from arbiter.tenancy.scopes import holds
from arbiter.tenancy.scoping import reset_org_scope, set_org_scope

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class OrgScopedViewSet(viewsets.GenericViewSet):
    metadata_class = ApiMetadata
    parser_classes = API_PARSERS
    # The scope a method needs; None means any member or key of the org may do it.
    read_scope: str | None = "datasets:read"
    write_scope: str | None = "datasets:write"
    # Per-action overrides, e.g. {"classify": "inference"}.
    action_scopes: dict[str, str | None] = {}

    # Response fields never stored for Idempotency-Key replays (secrets that are shown once).
    idempotency_redact: tuple[str, ...] = ()

    access: OrgAccess
    _scope_token: Token[int | None] | None = None
    _idempotency: IdempotencyRecord | None = None

    def required_scope(self, request: Request) -> str | None:
        action = getattr(self, "action", None)
        if action and action in self.action_scopes:
            return self.action_scopes[action]
        return self.read_scope if request.method in SAFE_METHODS else self.write_scope

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        refuse_unstorable_text(request.query_params)
        self.access = resolve_org_access(request, kwargs["org"])
        self._scope_token = set_org_scope(self.access.org_id)
        required = self.required_scope(request)
        if required is not None and not holds(self.access.scopes, required):
            raise exceptions.PermissionDenied(
                f"This needs the '{required}' scope, which the caller does not hold."
            )
        self._idempotency = idempotency_begin(
            request=request, alias=self.service_alias, org_id=self.access.org_id, actor=self.access.actor
        )

    @property
    def service_alias(self) -> str:
        """The database of the service this view belongs to (where its idempotency records live)."""
        parts = type(self).__module__.split(".")
        return db_alias(parts[1]) if parts[0] == "services" else "default"

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        record = self._idempotency
        if record is not None:
            idempotency_finish(
                record=record, alias=self.service_alias, response=response, redact=self.idempotency_redact
            )
            self._idempotency = None
        token = self._scope_token
        if token is not None:
            reset_org_scope(token)
            self._scope_token = None
        return super().finalize_response(request, response, *args, **kwargs)

    @property
    def org_id(self) -> int:
        return self.access.org_id

    def get_queryset(self) -> models.QuerySet[Any]:
        return self.safely_get_queryset()

    def safely_get_queryset(self) -> models.QuerySet[Any]:
        """Return this resource's queryset; `OrgScopedModel.objects` is already limited to the URL's org."""
        raise ImproperlyConfigured(f"{type(self).__name__} must implement safely_get_queryset()")

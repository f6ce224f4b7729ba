"""DRF authentication for people (session) and machines (`Authorization: Bearer <api key>`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from arbiter.tenancy.models import KEY_PREFIX, ApiKey, hash_key_secret

# Writing last_used_at on every request would turn each read into a write; a minute is precise enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class ApiKeyPrincipal:
    """`request.user` for a request authenticated by an API key: the key acts for its org, not for a person."""

    key_id: int
    org_id: int
    name: str
    is_authenticated: bool = True
    is_anonymous: bool = False
    pk: None = None
    id: None = None

    def __str__(self) -> str:
        return f"api-key:{self.key_id}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ApiKeyPrincipal, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = token.strip()
        if not token:
            raise exceptions.AuthenticationFailed("The Authorization header has no API key after 'Bearer'.")
        return authenticate_api_key(token)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def authenticate_api_key(secret: str) -> tuple[ApiKeyPrincipal, ApiKey]:
    if not secret.startswith(KEY_PREFIX):
        raise exceptions.AuthenticationFailed("Invalid API key.")
    key = ApiKey.objects.select_related("org").filter(hashed_secret=hash_key_secret(secret)).first()
    if key is None or key.revoked_at is not None:
        raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
    now = timezone.now()
    if key.expires_at is not None and key.expires_at <= now:
        raise exceptions.AuthenticationFailed("This API key has expired.")
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        # The one write other services make to identity tables: a timestamp, through the gateway's alias.
        ApiKey.objects.using("default").filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return ApiKeyPrincipal(key_id=key.pk, org_id=key.org_id, name=key.name), key


class SessionAuthentication(authentication.SessionAuthentication):
    """Django sessions with CSRF enforced for unsafe methods (the console's own API calls)."""

    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        return super().authenticate(request)

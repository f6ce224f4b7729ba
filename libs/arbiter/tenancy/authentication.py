"""DRF authentication for people (session) and machines (`Authorization: Bearer <api key>`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cachetools import TTLCache
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from arbiter.config.typed_settings import arbiter_settings
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


# Keys this process looked up recently, by hashed secret: a key is read from the identity database at most
# once per `ARBITER_API_KEY_CACHE_SECONDS`, so a revocation or expiry made elsewhere (the gateway) is honoured
# within that time; one made by this process is honoured at once (`api_key_cache_forget`).
_key_cache: TTLCache[str, ApiKey] | None = None
_key_cache_lock = threading.Lock()


def _cached_key(hashed: str) -> ApiKey | None:
    global _key_cache
    ttl = arbiter_settings().core.api_key_cache_seconds
    if ttl <= 0:
        return ApiKey.objects.select_related("org").filter(hashed_secret=hashed).first()
    with _key_cache_lock:
        if _key_cache is None or _key_cache.ttl != ttl:
            _key_cache = TTLCache(maxsize=10_000, ttl=ttl)
        key = _key_cache.get(hashed)
    if key is None:
        key = ApiKey.objects.select_related("org").filter(hashed_secret=hashed).first()
        if key is not None:
            with _key_cache_lock:
                _key_cache[hashed] = key
    return key


def api_key_cache_forget(hashed_secret: str | None = None) -> None:
    """Forget one cached key (revoked by this process) or every one (tests)."""
    with _key_cache_lock:
        if _key_cache is not None:
            if hashed_secret is None:
                _key_cache.clear()
            else:
                _key_cache.pop(hashed_secret, None)


def authenticate_api_key(secret: str) -> tuple[ApiKeyPrincipal, ApiKey]:
    if not secret.startswith(KEY_PREFIX):
        raise exceptions.AuthenticationFailed("Invalid API key.")
    key = _cached_key(hash_key_secret(secret))
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

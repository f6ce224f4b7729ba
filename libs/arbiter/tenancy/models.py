from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from arbiter.tenancy.scopes import Role


class Org(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "tenancy_org"

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=[(r.value, r.value) for r in Role], default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "tenancy_membership"
        constraints = [
            models.UniqueConstraint(fields=["org", "user"], name="one_membership_per_user_and_org")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.org_id} as {self.role}"


KEY_PREFIX = "arb_"


def generate_key_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(30)


def hash_key_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKey(models.Model):
    """An org-scoped API key. Only the sha256 of the secret is stored, with a prefix and the last four characters
    so people can recognise a key in lists; the secret itself is shown once, when the key is created."""

    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200)
    hashed_secret = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    last_four = models.CharField(max_length=4)
    scopes = models.JSONField(default=list)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "tenancy_api_key"

    def __str__(self) -> str:
        return f"{self.name} ({self.display})"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    @property
    def display(self) -> str:
        return f"{self.prefix}…{self.last_four}"

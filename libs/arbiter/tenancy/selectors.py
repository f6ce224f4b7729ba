"""Reads of identity data."""

from __future__ import annotations

from django.db.models import QuerySet

from arbiter.tenancy.models import ApiKey, Membership


def orgs_for_user(*, user_id: int) -> QuerySet[Membership]:
    return Membership.objects.select_related("org").filter(user_id=user_id).order_by("org__name")


def org_members(*, org_id: int) -> QuerySet[Membership]:
    return Membership.objects.select_related("user").filter(org_id=org_id).order_by("created_at", "pk")


def org_api_keys(*, org_id: int) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(org_id=org_id).order_by("-created_at", "-pk")

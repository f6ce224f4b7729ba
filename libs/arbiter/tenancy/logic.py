"""Writes to identity: sign-up, orgs, members, API keys. Keyword-only, one transaction each."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from arbiter.api.errors import ApiError
from arbiter.tenancy.authentication import api_key_cache_forget
from arbiter.tenancy.models import ApiKey, Membership, Org, generate_key_secret, hash_key_secret
from arbiter.tenancy.scopes import ROLE_RANK, SCOPES, Role, expand

RESERVED_SLUGS = frozenset({"new", "me", "api", "admin", "static", "console", "settings"})


@dataclass(frozen=True)
class CreatedApiKey:
    key: ApiKey
    secret: str


def _normalise_email(email: str) -> str:
    email = (email or "").strip()
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        raise ApiError(
            status=400,
            code="invalid",
            message="email: enter a valid email address.",
            details={"email": ["Enter a valid email address."]},
        )
    return email.lower()


def _unique_slug(name: str) -> str:
    base = slugify(name)[:40] or "org"
    if base in RESERVED_SLUGS:
        base = f"{base}-org"
    slug, n = base, 1
    while Org.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def _check_slug(slug: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,48}[a-z0-9]", slug) or slug in RESERVED_SLUGS:
        raise ApiError(
            status=400,
            code="invalid",
            message="slug: use 3-50 lowercase letters, digits and dashes, not starting or ending with a dash.",
            details={"slug": ["Invalid slug."]},
        )
    return slug


@transaction.atomic(using="default")
def org_create(*, name: str, owner: User, slug: str | None = None) -> Org:
    name = (name or "").strip()
    if not name:
        raise ApiError(
            status=400,
            code="invalid",
            message="name: this field is required.",
            details={"name": ["This field is required."]},
        )
    slug = _check_slug(slug) if slug else _unique_slug(name)
    if Org.objects.filter(slug=slug).exists():
        raise ApiError(
            status=409,
            code="slug_taken",
            message=f"The org slug '{slug}' is taken; choose another.",
            details={"slug": ["Taken."]},
        )
    org = Org.objects.create(slug=slug, name=name[:200])
    Membership.objects.create(org=org, user=owner, role=Role.OWNER)
    return org


def user_signup(*, email: str, password: str, org_name: str) -> tuple[User, Org]:
    """Create a user and their first org, all or nothing."""
    email = _normalise_email(email)
    try:
        validate_password(password)
    except DjangoValidationError as exc:
        raise ApiError(
            status=400,
            code="invalid",
            message="password: " + " ".join(exc.messages),
            details={"password": exc.messages},
        ) from None
    try:
        with transaction.atomic(using="default"):
            if User.objects.filter(username=email).exists():
                raise ApiError(
                    status=409,
                    code="email_taken",
                    message="An account with this email already exists. Sign in instead.",
                    details={"email": ["Taken."]},
                )
            user = User.objects.create_user(username=email, email=email, password=password)
            org = org_create(name=org_name or f"{email.split('@')[0]}'s org", owner=user)
    except IntegrityError:
        raise ApiError(
            status=409,
            code="email_taken",
            message="An account with this email already exists. Sign in instead.",
            details={"email": ["Taken."]},
        ) from None
    return user, org


@transaction.atomic(using="default")
def member_add(*, org_id: int, email: str, role: str, acting_role: Role | None) -> Membership:
    email = _normalise_email(email)
    new_role = _parse_role(role)
    _check_can_grant(acting_role=acting_role, role=new_role)
    user = User.objects.filter(username=email).first()
    if user is None:
        raise ApiError(
            status=404,
            code="user_not_found",
            message=f"No Arbiter account uses {email}; ask them to sign up first.",
            details={"email": ["No such user."]},
        )
    if Membership.objects.filter(org_id=org_id, user=user).exists():
        raise ApiError(status=409, code="already_member", message=f"{email} is already a member.")
    return Membership.objects.create(org_id=org_id, user=user, role=new_role)


@transaction.atomic(using="default")
def member_set_role(*, membership: Membership, role: str, acting_role: Role | None) -> Membership:
    new_role = _parse_role(role)
    _check_can_grant(acting_role=acting_role, role=new_role)
    _check_can_grant(acting_role=acting_role, role=Role(membership.role))
    if membership.role == Role.OWNER and new_role != Role.OWNER:
        _ensure_another_owner(membership)
    membership.role = new_role
    membership.save(update_fields=["role"])
    return membership


@transaction.atomic(using="default")
def member_remove(*, membership: Membership, acting_role: Role | None) -> None:
    _check_can_grant(acting_role=acting_role, role=Role(membership.role))
    if membership.role == Role.OWNER:
        _ensure_another_owner(membership)
    membership.delete()


def _ensure_another_owner(membership: Membership) -> None:
    others = Membership.objects.select_for_update().filter(org_id=membership.org_id, role=Role.OWNER)
    if not others.exclude(pk=membership.pk).exists():
        raise ApiError(
            status=409, code="last_owner", message="An org needs at least one owner; add another first."
        )


def _parse_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"role: choose one of {', '.join(r.value for r in Role)}.",
            details={"role": ["Invalid choice."]},
        ) from None


def _check_can_grant(*, acting_role: Role | None, role: Role) -> None:
    # Keys with `admin` act as admins; nobody can hand out more than they hold.
    acting = acting_role or Role.ADMIN
    if ROLE_RANK[role] > ROLE_RANK[acting]:
        raise ApiError(
            status=403,
            code="permission_denied",
            message=f"Only an owner can grant or change the '{role}' role.",
        )


def api_key_create(
    *,
    org_id: int,
    name: str,
    scopes: list[str],
    granted: frozenset[str],
    created_by_id: int | None,
    expires_at: datetime | None = None,
) -> CreatedApiKey:
    name = (name or "").strip()
    if not name:
        raise ApiError(
            status=400,
            code="invalid",
            message="name: this field is required.",
            details={"name": ["This field is required."]},
        )
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"scopes: choose one or more of {', '.join(SCOPES)}"
            + (f"; unknown: {unknown}" if unknown else ""),
            details={"scopes": ["Invalid scopes."]},
        )
    beyond = sorted(expand(set(scopes)) - expand(granted))
    if beyond:
        raise ApiError(
            status=403,
            code="permission_denied",
            message=f"A key cannot carry scopes its creator lacks: {', '.join(beyond)}.",
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise ApiError(
            status=400,
            code="invalid",
            message="expires_at: must be in the future.",
            details={"expires_at": ["Must be in the future."]},
        )
    secret = generate_key_secret()
    key = ApiKey.objects.create(
        org_id=org_id,
        name=name[:200],
        hashed_secret=hash_key_secret(secret),
        prefix=secret[:12],
        last_four=secret[-4:],
        scopes=sorted(set(scopes)),
        created_by_id=created_by_id,
        expires_at=expires_at,
    )
    return CreatedApiKey(key=key, secret=secret)


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    api_key_cache_forget(key.hashed_secret)
    return key


@dataclass(frozen=True)
class Bootstrap:
    org: Org
    email: str
    password: str
    api_key: str


@transaction.atomic(using="default")
def org_bootstrap(*, slug: str, email: str, password: str | None = None) -> Bootstrap:
    """Create or reuse an org and its owner for scripts; always returns working credentials.

    An existing user's password is reset to the one returned, and a fresh all-scope key is issued.
    """
    email = _normalise_email(email)
    password = password or secrets.token_urlsafe(12)
    user = User.objects.filter(username=email).first()
    if user is None:
        user = User.objects.create_user(username=email, email=email, password=password)
    else:
        user.set_password(password)
        user.save(update_fields=["password"])
    org = Org.objects.filter(slug=_check_slug(slug)).first()
    if org is None:
        org = Org.objects.create(slug=slug, name=slug.replace("-", " ").title())
    membership, _ = Membership.objects.get_or_create(org=org, user=user, defaults={"role": Role.OWNER})
    if membership.role != Role.OWNER:
        membership.role = Role.OWNER
        membership.save(update_fields=["role"])
    created = api_key_create(
        org_id=org.pk, name="bootstrap", scopes=["admin"], granted=frozenset({"admin"}), created_by_id=user.pk
    )
    return Bootstrap(org=org, email=email, password=password, api_key=created.secret)

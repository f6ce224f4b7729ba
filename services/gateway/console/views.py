"""Console pages owned by the gateway: sign-up, sign-in, sign-out, org overview, API keys, members."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from arbiter.api.errors import ApiError
from arbiter.config.routes import page_path
from arbiter.console.pages import org_page
from arbiter.tenancy import logic, selectors
from arbiter.tenancy.access import OrgAccess
from arbiter.tenancy.scopes import SCOPES, Role, expand, holds


def _safe_next(request: HttpRequest, fallback: str = "/console/") -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return fallback


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    form: dict[str, Any] = {"email": "", "org_name": ""}
    error = None
    if request.method == "POST":
        form = {"email": request.POST.get("email", ""), "org_name": request.POST.get("org_name", "")}
        try:
            user, org = logic.user_signup(
                email=form["email"], password=request.POST.get("password", ""), org_name=form["org_name"]
            )
        except ApiError as exc:
            error = exc.message
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, f"Welcome to Arbiter. Your org “{org.name}” is ready.")
            return redirect(f"/console/{org.slug}/")
    return render(
        request, "gateway/signup.html", {"form": form, "error": error}, status=400 if error else 200
    )


@require_http_methods(["GET", "POST"])
def signin(request: HttpRequest) -> HttpResponse:
    error = None
    email = ""
    if request.method == "POST":
        email = request.POST.get("email", "").strip().lower()
        user = authenticate(request, username=email, password=request.POST.get("password", ""))
        if user is None:
            error = "That email and password do not match an account."
        else:
            login(request, user)
            return HttpResponseRedirect(_safe_next(request))
    context = {"error": error, "email": email, "next": _safe_next(request, "")}
    return render(request, "gateway/signin.html", context, status=400 if error else 200)


@require_POST
def signout(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("/signin")


def home(request: HttpRequest) -> HttpResponse:
    return redirect("/console/" if request.user.is_authenticated else "/signin")


def _user_id(request: HttpRequest) -> int:
    """The signed-in user's id, for views behind `login_required`."""
    assert request.user.pk is not None
    return int(request.user.pk)


@login_required
def console_home(request: HttpRequest) -> HttpResponse:
    memberships = list(selectors.orgs_for_user(user_id=_user_id(request)))
    # With a single org there is nothing to choose; `?all=1` still shows the list (to create another org).
    if len(memberships) == 1 and "all" not in request.GET:
        return redirect(f"/console/{memberships[0].org.slug}/")
    return render(request, "gateway/orgs.html", {"memberships": memberships})


@login_required
def switch_org(request: HttpRequest) -> HttpResponse:
    slug = request.GET.get("org", "")
    if slug in ("", "-"):
        return redirect("/console/?all=1")
    if not any(m.org.slug == slug for m in selectors.orgs_for_user(user_id=_user_id(request))):
        raise Http404
    return redirect(f"/console/{slug}/")


@login_required
@require_POST
def org_create(request: HttpRequest) -> HttpResponse:
    try:
        assert isinstance(request.user, User)  # login_required
        org = logic.org_create(name=request.POST.get("name", ""), owner=request.user)
    except ApiError as exc:
        messages.error(request, exc.message)
        return redirect("/console/")
    return redirect(f"/console/{org.slug}/")


@dataclass(frozen=True)
class GettingStartedStep:
    title: str
    why: str
    action: str
    url: str
    # A list endpoint of the JSON API: the page marks the step done once it returns anything.
    check_api: str | None
    done: bool


def _getting_started(*, org: str, access: OrgAccess) -> list[GettingStartedStep]:
    api = f"/api/v1/orgs/{org}"
    wanted = [
        (
            "Upload a dataset",
            "A CSV, XLSX or JSONL file with a text column and one or more label columns. "
            "No data yet? Start from an example.",
            "Upload data",
            "console-datasets",
            f"{api}/datasets",
        ),
        (
            "Train a model",
            "Snapshot the dataset, then train a classifier on it in seconds. Read its metrics "
            "and try it in the playground.",
            "Train",
            "console-models",
            f"{api}/models",
        ),
        (
            "Deploy it",
            "Put a version behind an endpoint that answers the REST API and the OpenAI and Mistral SDKs.",
            "Deploy",
            "console-deployments",
            f"{api}/deployments",
        ),
    ]
    steps = []
    for title, why, action, url_name, check_api in wanted:
        url = page_path(url_name, org=org)
        steps.append(GettingStartedStep(title, why, action, url, check_api, done=False))
    if holds(access.scopes, "admin"):
        has_key = selectors.org_api_keys(org_id=access.org_id).filter(revoked_at__isnull=True).exists()
        steps.append(
            GettingStartedStep(
                "Create an API key",
                "Your applications call Arbiter with a key. Choose exactly what it may do.",
                "Create a key",
                page_path("console-api-keys", org=org),
                None,
                done=has_key,
            )
        )
        teammates = selectors.org_members(org_id=access.org_id).count() > 1
        steps.append(
            GettingStartedStep(
                "Invite your team",
                "Reviewers can label and read metrics; admins manage keys and members.",
                "Add members",
                page_path("console-members", org=org),
                None,
                done=teammates,
            )
        )
    return steps


@org_page()
def org_overview(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    context = {"access": access, "steps": _getting_started(org=org, access=access)}
    return render(request, "gateway/overview.html", context)


@org_page("admin")
@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    created = None
    error = None
    if request.method == "POST":
        expires_at = _parse_local_datetime(request.POST.get("expires_at", ""))
        try:
            created = logic.api_key_create(
                org_id=access.org_id,
                name=request.POST.get("name", ""),
                scopes=request.POST.getlist("scopes"),
                granted=access.scopes,
                created_by_id=access.user_id,
                expires_at=expires_at,
            )
        except ApiError as exc:
            error = exc.message
    context = {
        "keys": selectors.org_api_keys(org_id=access.org_id),
        "scopes": [(name, text) for name, text in SCOPES.items() if name in expand(access.scopes)],
        "created": created,
        "error": error,
        # A page that sent the person here for a key (a deployment's snippet) is one click away afterwards.
        "next": _safe_next(request, ""),
    }
    return render(request, "gateway/api_keys.html", context, status=400 if error else 200)


def _parse_local_datetime(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return timezone.make_aware(parsed) if timezone.is_naive(parsed) else parsed


@org_page("admin")
@require_POST
def api_key_revoke(request: HttpRequest, key_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    key = selectors.org_api_keys(org_id=access.org_id).filter(pk=key_id).first()
    if key is None:
        raise Http404
    logic.api_key_revoke(key=key)
    messages.success(request, f"Revoked “{key.name}” ({key.display}). It stops working immediately.")
    return redirect(f"/console/{org}/api-keys")


@org_page()
@require_http_methods(["GET", "POST"])
def members(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    if request.method == "POST":
        if not holds(access.scopes, "admin"):
            messages.error(request, "Only admins and owners can change members.")
            return redirect(f"/console/{org}/members")
        try:
            action = request.POST.get("action")
            if action == "add":
                logic.member_add(
                    org_id=access.org_id,
                    email=request.POST.get("email", ""),
                    role=request.POST.get("role", "member"),
                    acting_role=access.role,
                )
                messages.success(request, "Member added.")
            else:
                member = request.POST.get("member", "")
                members = selectors.org_members(org_id=access.org_id)
                membership = members.filter(pk=int(member)).first() if member.isdigit() else None
                if membership is None:
                    raise Http404
                if action == "remove":
                    logic.member_remove(membership=membership, acting_role=access.role)
                    messages.success(request, f"Removed {membership.user.email}.")
                else:
                    logic.member_set_role(
                        membership=membership, role=request.POST.get("role", ""), acting_role=access.role
                    )
                    messages.success(request, f"{membership.user.email} is now {membership.role}.")
        except ApiError as exc:
            messages.error(request, exc.message)
        return redirect(f"/console/{org}/members")
    context = {
        "members": selectors.org_members(org_id=access.org_id),
        "roles": [r.value for r in Role],
        "can_manage": holds(access.scopes, "admin"),
    }
    return render(request, "gateway/members.html", context)

"""Helpers for console pages: sign-in required, org access from the URL, scope checks, org scope set."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from arbiter.tenancy.access import resolve_org_access
from arbiter.tenancy.scopes import holds
from arbiter.tenancy.scoping import org_scope

View = Callable[..., HttpResponse]


def org_page(scope: str | None = None) -> Callable[[View], View]:
    """Decorate a console view taking `org` from the URL; it receives `access` (an OrgAccess) as a keyword."""

    def decorate(view: View) -> View:
        @login_required
        @functools.wraps(view)
        def wrapper(request: HttpRequest, org: str, *args: Any, **kwargs: Any) -> HttpResponse:
            access = resolve_org_access(request, org)
            if scope is not None and not holds(access.scopes, scope):
                raise PermissionDenied
            with org_scope(access.org_id):
                return view(request, *args, org=org, access=access, **kwargs)

        return wrapper

    return decorate

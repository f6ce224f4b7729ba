"""Liveness and readiness: `/healthz` says the process is alive; `/readyz` checks what it depends on."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from arbiter.config.services import db_alias

# Other parts (the event broker, ...) register checks that return None when fine, or a reason when not.
ReadinessCheck = Callable[[], str | None]
_checks: dict[str, ReadinessCheck] = {}


def register_readiness_check(name: str, check: ReadinessCheck) -> None:
    _checks[name] = check


def _database_check(alias: str) -> ReadinessCheck:
    def check() -> str | None:
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    return check


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "services": list(settings.ARBITER_SERVICES)})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, ReadinessCheck] = {}
    for alias in sorted({"default", *(db_alias(s) for s in settings.ARBITER_SERVICES)}):
        checks[f"database:{alias}"] = _database_check(alias)
    checks.update(_checks)
    results = {name: check() for name, check in checks.items()}
    ready = all(reason is None for reason in results.values())
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": {
            name: {"ok": reason is None, **({"reason": reason} if reason else {})}
            for name, reason in results.items()
        },
    }
    return JsonResponse(body, status=200 if ready else 503)

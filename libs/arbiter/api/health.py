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
_checks: dict[str, tuple[ReadinessCheck, bool]] = {}


def register_readiness_check(name: str, check: ReadinessCheck, *, required: bool = True) -> None:
    """A check that is not `required` is reported (status `degraded`) without taking the process out of rotation."""
    _checks[name] = (check, required)


def unregister_readiness_check(name: str) -> None:
    _checks.pop(name, None)


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
    checks: dict[str, tuple[ReadinessCheck, bool]] = {}
    for alias in sorted({"default", *(db_alias(s) for s in settings.ARBITER_SERVICES)}):
        checks[f"database:{alias}"] = (_database_check(alias), True)
    checks.update(_checks)
    results = {name: check() for name, (check, _) in checks.items()}
    ready = all(reason is None for name, reason in results.items() if checks[name][1])
    degraded = any(reason is not None for reason in results.values())
    body = {
        "status": "not_ready" if not ready else ("degraded" if degraded else "ready"),
        "checks": {
            name: {"ok": reason is None, **({"reason": reason} if reason else {})}
            for name, reason in results.items()
        },
    }
    return JsonResponse(body, status=200 if ready else 503)

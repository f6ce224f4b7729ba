"""Service modes: which of Arbiter's services are active in this process.

Like Sentry's silo modes, one codebase runs as any subset of its services. `ARBITER_SERVICES` (read by
`CoreSettings`) is `all` (the default) or a comma list such as `dataset` or `training,inference`; it decides
which services' apps, URLs, migrations and event consumers this process has.
"""

from __future__ import annotations

ALL_SERVICES: tuple[str, ...] = ("gateway", "dataset", "annotation", "training", "inference", "billing")

# Identity tables (users, sessions, orgs, memberships, API keys) belong to the gateway's database. Every
# other service reads them to authenticate, and never writes them.
IDENTITY_APP_LABELS: frozenset[str] = frozenset({"auth", "contenttypes", "sessions", "tenancy"})

# Kernel tables every service database carries (its outbox, processed-event ids, idempotency records).
PER_SERVICE_APP_LABELS: frozenset[str] = frozenset({"events", "api"})


class ServiceConfigError(ValueError):
    pass


def parse_services(value: str | None) -> tuple[str, ...]:
    raw = (value or "all").strip()
    if raw in ("", "all"):
        return ALL_SERVICES
    names = [part.strip() for part in raw.split(",") if part.strip()]
    unknown = sorted(set(names) - set(ALL_SERVICES))
    if unknown:
        raise ServiceConfigError(
            f"ARBITER_SERVICES names unknown services {unknown}; choose from {', '.join(ALL_SERVICES)} or 'all'"
        )
    # Keep the canonical order so URL and migration order never depend on how the list was typed.
    return tuple(name for name in ALL_SERVICES if name in names)


def db_alias(service: str) -> str:
    """The Django database alias that holds a service's tables."""
    return "default" if service == "gateway" else service


def service_for_alias(alias: str) -> str:
    return "gateway" if alias == "default" else alias

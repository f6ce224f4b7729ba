"""Small, strict helpers for reading settings from the environment."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit


class SettingsError(RuntimeError):
    pass


def env_str(name: str, default: str | None = None, *, required: bool = False) -> str | None:
    value = os.environ.get(name)
    if value is None or value == "":
        if required:
            raise SettingsError(f"the environment variable {name} is required but not set")
        return default
    return value


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be a boolean (true/false), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {value!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [part.strip() for part in value.split(",") if part.strip()]


def env_json(name: str, default: Any) -> Any:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{name} must be JSON: {exc}") from None


def arbiter_home() -> Path:
    return Path(env_str("ARBITER_HOME", ".arbiter") or ".arbiter").resolve()


def database_from_url(url: str, *, name: str | None = None) -> dict[str, Any]:
    """Turn `postgres://user:pass@host:port/dbname?opt=v` or `sqlite:///path` into a Django DATABASES entry."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme == "sqlite":
        return sqlite_database(Path(unquote(parts.path.lstrip("/")) if parts.netloc else unquote(parts.path)))
    if scheme not in ("postgres", "postgresql"):
        raise SettingsError(f"unsupported database URL scheme {parts.scheme!r}; use postgres:// or sqlite://")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name or unquote(parts.path.lstrip("/")) or "arbiter",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": dict(parse_qsl(parts.query)),
    }


def sqlite_database(path: Path) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "CONN_MAX_AGE": 60,
        # Several processes (web, relay, consumers, trainer) share these files locally: WAL lets readers
        # proceed beside one writer, and IMMEDIATE transactions avoid lock-upgrade deadlocks.
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        },
    }

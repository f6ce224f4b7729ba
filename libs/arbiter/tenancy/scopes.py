"""Roles and API-key scopes. A member's role grants a set of scopes; an API key carries scopes directly.

Permission checks only ever ask "does this caller hold scope S in this org?", whoever the caller is.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


SCOPES: dict[str, str] = {
    "datasets:read": "Read datasets, rows, snapshots and label schemas",
    "datasets:write": "Upload and edit datasets, create snapshots, run annotation",
    "models:read": "Read models, versions, metrics and deployments",
    "models:write": "Train models, create and stop deployments",
    "inference": "Classify text with deployed models and use the playground",
    "billing:read": "Read usage and billing",
    "admin": "Manage members, API keys, webhooks and billing (implies every other scope)",
}

_VIEWER = frozenset({"datasets:read", "models:read", "billing:read"})
_MEMBER = _VIEWER | {"datasets:write", "models:write", "inference"}
_ADMIN = _MEMBER | {"admin"}

ROLE_SCOPES: dict[Role, frozenset[str]] = {
    Role.VIEWER: _VIEWER,
    Role.MEMBER: frozenset(_MEMBER),
    Role.ADMIN: frozenset(_ADMIN),
    Role.OWNER: frozenset(_ADMIN),
}

ROLE_RANK: dict[Role, int] = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


def expand(scopes: frozenset[str] | set[str] | list[str]) -> frozenset[str]:
    """`admin` implies every scope."""
    granted = frozenset(scopes)
    return frozenset(SCOPES) if "admin" in granted else granted


def holds(granted: frozenset[str], required: str) -> bool:
    return required in expand(granted)

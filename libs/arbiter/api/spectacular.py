"""drf-spectacular's settings: how the OpenAPI schema at `/api/schema/` is generated.

Kept apart from `arbiter.config.settings` (which imports this dict) because the schema is the API's concern;
the pieces it names (authentication schemes, the error shape, error responses) live in `arbiter.api.schema`.
"""

from __future__ import annotations

from typing import Any

from arbiter.tenancy.scopes import Role

SPECTACULAR_SETTINGS: dict[str, Any] = {
    "TITLE": "Arbiter API",
    "DESCRIPTION": (
        "Build, evaluate and deploy content-moderation classifiers.\n\n"
        "Machines authenticate with `Authorization: Bearer <api key>` (a key belongs to one org and carries "
        "scopes); people with the console's session cookie. Every org-scoped path takes the org's slug; "
        'another org\'s object answers 404 exactly like a missing one. Errors are JSON: `{"error": {"code", '
        '"message", "details"}}`, and a validation message names the field. Mutating POSTs accept an '
        "`Idempotency-Key` header: a retry with the same key returns the first answer."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # Names for choice sets whose field name other choice sets share. Import paths must work in every service
    # mode, so a service's own choices are spelled out; a change to them brings back the generator's warning,
    # which a test refuses.
    "ENUM_NAME_OVERRIDES": {
        "MemberRoleEnum": [role.value for role in Role],
        "ModelTypeEnum": ["text_classification", "image_classification", "policy"],
        # The same set read from the model field, with its labels.
        "ModelTypeLabelledEnum": [
            ("text_classification", "text classification"),
            ("image_classification", "image classification"),
            ("policy", "policy"),
        ],
        "SnapshotTypeEnum": ["text_classification", "image_classification"],
    },
}

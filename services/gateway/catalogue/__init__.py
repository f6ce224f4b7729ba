"""The public event catalogue: the event types webhooks deliver, each with a stable, versioned JSON Schema.

It is separate from the internal envelope and schemas (`arbiter.events.registry`): a receiver sees
`{"type", "timestamp", "data"}` where `data` holds only the fields its public schema declares, so an internal
field (a blob key, a manifest) never leaks and internal schemas may change without breaking receivers.
A public type has the name of the internal event it is made from; the version is the public schema's.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).parent / "schemas"
CATALOGUE_VERSION = "2025-01-01"

TEST_TYPE = "webhook.test"


@dataclass(frozen=True)
class PublicEventType:
    type: str
    version: int = 1

    @functools.cached_property
    def schema(self) -> dict[str, Any]:
        return dict(json.loads((SCHEMA_DIR / f"{self.type}.v{self.version}.json").read_text()))

    @property
    def description(self) -> str:
        return str(self.schema["description"])

    @property
    def example(self) -> dict[str, Any]:
        return dict(self.schema["examples"][0])

    def project(self, internal: Mapping[str, Any]) -> dict[str, Any]:
        """The public `data` of an internal event's data: the fields the public schema declares."""
        declared = self.schema["properties"]
        return {name: internal[name] for name in declared if name in internal}


PUBLIC_TYPES: dict[str, PublicEventType] = {
    t.type: t
    for t in (
        PublicEventType("dataset.imported"),
        PublicEventType("snapshot.created"),
        PublicEventType("training.completed"),
        PublicEventType("training.failed"),
        PublicEventType("deployment.live"),
        PublicEventType("deployment.failed"),
        PublicEventType("deployment.stopped"),
        PublicEventType("annotation.completed"),
        PublicEventType("billing.quota_reached"),
        PublicEventType("webhook.disabled"),
        PublicEventType(TEST_TYPE),
    )
}


def public_type(name: str) -> PublicEventType | None:
    return PUBLIC_TYPES.get(name)


def pattern_valid(pattern: str) -> bool:
    """`*`, a domain pattern such as `training.*`, or one type of the catalogue."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        domain = pattern[:-2]
        return any(name.split(".", 1)[0] == domain for name in PUBLIC_TYPES)
    return pattern in PUBLIC_TYPES


def matches(patterns: list[str], type_name: str) -> bool:
    """Whether an endpoint subscribed to `patterns` gets `type_name` (the test ping goes to every endpoint
    that asks for it, whatever it subscribed to)."""
    return any(fnmatchcase(type_name, pattern) for pattern in patterns)

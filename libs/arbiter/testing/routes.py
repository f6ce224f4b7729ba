"""URL samples for route-table tests: one concrete path for every URL pattern of every service."""

from __future__ import annotations

import re
from collections.abc import Iterator

from django.urls import URLPattern, URLResolver
from django.urls.resolvers import RegexPattern

from arbiter.config.services import ALL_SERVICES

SAMPLE = {
    "int": "7",
    "slug": "acme",
    "str": "key-1",
    "path": "a/b",
    "uuid": "0" * 8 + "-0000-0000-0000-" + "0" * 12,
}
PARAMETER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")


def walk(patterns: list[URLPattern | URLResolver], prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from walk(pattern.url_patterns, route)
        else:
            yield route, pattern


def sample_path(route: str) -> str:
    assert not route.startswith("^"), f"{route}: use path() routes, not regular expressions"
    return "/" + PARAMETER.sub(lambda m: SAMPLE[m["converter"] or "str"], route)


def service_resolver(service: str) -> URLResolver:
    return URLResolver(RegexPattern(r"^/"), f"services.{service}.urls")


def service_urls() -> list[tuple[str, str, URLPattern]]:
    return [
        (service, sample_path(route), pattern)
        for service in ALL_SERVICES
        for route, pattern in walk(service_resolver(service).url_patterns)
    ]

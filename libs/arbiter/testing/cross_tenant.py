"""Keeps `@pytest.mark.cross_tenant("<url name>", ...)` honest.

The marker claims that the test proves a victim org gets 404 for those org-scoped URLs, and
`tests/architecture` counts a URL as covered when a marker names it. So every marked test records the URL
names of the requests it makes (through the test client or a live server) and fails when a name in its
marker was never requested.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def unrequested(claimed: tuple[str, ...], requested: set[str]) -> list[str]:
    return sorted(set(claimed) - requested)


@pytest.fixture(autouse=True)
def cross_tenant_requests(request: pytest.FixtureRequest) -> Iterator[set[str]]:
    """The URL names requested during a `cross_tenant` test (an empty, unwatched set for other tests)."""
    marker = request.node.get_closest_marker("cross_tenant")
    requested: set[str] = set()
    if marker is None:
        yield requested
        return
    from django.core.signals import request_started
    from django.urls import Resolver404, resolve

    def record(sender: Any, environ: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if environ is None:
            return
        try:
            match = resolve(environ.get("PATH_INFO", ""))
        except Resolver404:
            return
        if match.url_name:
            requested.add(match.url_name)

    request_started.connect(record, weak=False)
    try:
        yield requested
    finally:
        request_started.disconnect(record)
    missing = unrequested(tuple(marker.args), requested)
    if missing:
        pytest.fail(
            f"{request.node.nodeid} is marked cross_tenant for {', '.join(missing)} but never requests "
            f"{'it' if len(missing) == 1 else 'them'}: request each URL as the victim and assert the 404",
            pytrace=False,
        )

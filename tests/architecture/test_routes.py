"""The route table agrees with the URLconfs: every URL of every service reaches its owner through the path router,
no path is claimed by two services, and every console page is built from (and linked through) the table."""

from __future__ import annotations

import re

import pytest
from django.urls import URLResolver, get_resolver, resolve

from arbiter.config.routes import DEFAULT_SERVICE, PAGES, ROUTES, page_path, route_owner
from arbiter.config.services import ALL_SERVICES
from arbiter.testing.routes import PARAMETER, SAMPLE, service_resolver, service_urls, walk


def test_every_service_url_is_routed_to_its_owner() -> None:
    urls = service_urls()
    assert len(urls) > 50
    misrouted = [
        (path, service, route_owner(path)) for service, path, _ in urls if route_owner(path) != service
    ]
    assert misrouted == [], "paths the router would send elsewhere (path, owner, routed to)"


def test_no_path_is_claimed_by_two_services() -> None:
    resolvers = {service: service_resolver(service) for service in ALL_SERVICES}
    for service, path, _ in service_urls():
        claimants = [other for other, resolver in resolvers.items() if _resolves(resolver, path)]
        assert claimants == [service], f"{path} is served by {claimants}"


def _resolves(resolver: URLResolver, path: str) -> bool:
    try:
        resolver.resolve(path)
    except Exception:
        return False
    return True


def test_kernel_urls_belong_to_the_default_service() -> None:
    for path in ("/healthz", "/readyz", "/api/schema/", "/api/docs/", "/static/console/console.css"):
        assert route_owner(path) == DEFAULT_SERVICE


def test_each_route_names_a_real_service_and_serves_some_url() -> None:
    urls = service_urls()
    for route in ROUTES:
        assert route.service in ALL_SERVICES
        if route.path.startswith(("/static/", "/api/schema/")):
            continue
        served = [
            path for service, path, _ in urls if service == route.service and re.match(route.path, path)
        ]
        assert served, f"route {route.path} ({route.service}) matches no URL of its service"


def test_console_urlconfs_are_built_from_the_page_table() -> None:
    """Every page (any URL outside the APIs) is in PAGES, served by the service the table names, so a link to
    it can be formatted in any process; the only others are parts of a page (htmx partials) below its path."""
    served = {
        pattern.name: (service, str(pattern.pattern))
        for service, path, pattern in service_urls()
        # Inbound webhooks (`/webhooks/stripe`) are APIs for another system, not pages.
        if not path.startswith(("/api/", "/v1/", "/webhooks/"))
    }
    assert {name: served[name][0] for name in PAGES} == {name: page.service for name, page in PAGES.items()}
    for name, (service, route) in served.items():
        if name not in PAGES:
            owners = [
                p for p in PAGES.values() if p.service == service and p.route and route.startswith(p.route)
            ]
            assert owners, f"{name} ({route}) is neither a page in the route table nor a part of one"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_paths_resolve_to_their_page(name: str) -> None:
    kwargs = {m["name"]: SAMPLE[m["converter"] or "str"] for m in PARAMETER.finditer(PAGES[name].route)}
    path = page_path(name, **kwargs)
    assert resolve(path).url_name == name
    assert route_owner(path) == PAGES[name].service


def test_a_page_link_quotes_what_it_is_given() -> None:
    assert page_path("console-model", org="a b", model_id=3) == "/console/a%20b/models/3"
    with pytest.raises(KeyError, match="model_id"):
        page_path("console-model", org="acme")


def test_the_root_urlconf_serves_every_service_in_all_mode() -> None:
    names = {p.name for _, p in walk(get_resolver().url_patterns) if p.name}
    assert set(PAGES) <= names


def test_each_service_serves_its_part_of_the_api_schema() -> None:
    for service in ALL_SERVICES:
        path = f"/api/schema/{service}/"
        assert resolve(path).url_name == f"api-schema-{service}"
        assert route_owner(path) == service

"""The route table: which service owns each URL, and where each console page lives.

Arbiter runs as one process or as one process per service behind a path router (the Helm chart's Ingress,
or nginx for `arbiter up --split`). Everything that needs to know who serves a path derives from this one
module, so the pieces cannot drift apart:

- `ROUTES`: the path expressions each service owns. The Ingress (`charts/arbiter/values.yaml`
  `ingress.routes`, checked by a test), the local nginx configuration (`arbiter.config.nginx`) and
  `route_owner()` read them with ingress-nginx's rules: a case-insensitive regular expression matched at
  the start of the path, the longest expression first; anything unmatched goes to `DEFAULT_SERVICE`.
- `PAGES`: every console page, by name, with its Django route. A service's console URLconf is built from it
  (`page()`), and links to any page, in a template (`{% page "console-model" org=... model_id=... %}`) or in
  Python (`page_path()`), are formatted from it as plain paths. A process that runs only the inference
  service can therefore link to the models page it does not serve; no `reverse()` of a name that only
  another process knows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from django.urls import URLPattern, path

from arbiter.config.services import ALL_SERVICES

DEFAULT_SERVICE = "gateway"


@dataclass(frozen=True)
class Route:
    service: str
    # A regular expression matched case-insensitively at the start of the request path.
    path: str


_ORG_API = "/api/v1/orgs/[^/]+"
_ORG_CONSOLE = "/console/[^/]+"

# Everything not listed (identity API, sign-in, the console's org and account pages, the kernel's health and
# schema URLs, the shared console static files) belongs to the gateway.
ROUTES: tuple[Route, ...] = (
    Route("dataset", f"{_ORG_API}/(datasets|snapshots)(/|$)"),
    Route("dataset", f"{_ORG_CONSOLE}/(datasets|snapshots)(/|$)"),
    Route("training", f"{_ORG_API}/(models|runs|policies)(/|$)"),
    Route("training", f"{_ORG_CONSOLE}/(models|policies)(/|$)"),
    Route("training", "/static/training/"),
    Route("annotation", f"{_ORG_API}/(label-schemas|annotation-jobs|llm-providers)(/|$)"),
    Route("annotation", f"{_ORG_API}/datasets/[^/]+/(review|agreement)(/|$)"),
    Route("annotation", f"{_ORG_CONSOLE}/labeling(/|$)"),
    Route("inference", f"{_ORG_API}/models/[^/]+/versions/[^/]+/playground(/|$)"),
    Route("inference", f"{_ORG_API}/(deployments|usage)(/|$)"),
    Route("inference", f"{_ORG_CONSOLE}/(deployments|usage|batches)(/|$)"),
    Route("inference", "/v1/"),
    # The compatibility files and fine-tuning APIs: a file becomes a dataset, a job a model version.
    Route("dataset", "/v1/files(/|$)"),
    Route("training", "/v1/(fine_tuning|models)(/|$)"),
    Route("inference", "/static/inference/"),
    Route("billing", f"{_ORG_API}/billing(/|$)"),
    Route("billing", f"{_ORG_CONSOLE}/billing(/|$)"),
    # Stripe's events (signed, no token).
    Route("billing", "/webhooks/stripe"),
)
# Each service's part of the OpenAPI schema (see arbiter.config.urls), served by that service.
ROUTES += tuple(
    Route(service, f"/api/schema/{service}/") for service in ALL_SERVICES if service != DEFAULT_SERVICE
)


def routes_by_precedence() -> list[Route]:
    """The routes in the order a path router tries them: ingress-nginx sorts regex paths longest first."""
    return sorted(ROUTES, key=lambda route: len(route.path), reverse=True)


@lru_cache(maxsize=1)
def _compiled() -> list[tuple[re.Pattern[str], str]]:
    return [(re.compile(route.path, re.IGNORECASE), route.service) for route in routes_by_precedence()]


def route_owner(request_path: str) -> str:
    """The service a path router sends `request_path` to."""
    for pattern, service in _compiled():
        if pattern.match(request_path):
            return service
    return DEFAULT_SERVICE


# --- console pages -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    service: str
    # Django route syntax, without the leading slash: "console/<slug:org>/models/<int:model_id>".
    route: str


_ORG = "console/<slug:org>"
_DATASET = f"{_ORG}/datasets/<int:dataset_id>"
_MODEL = f"{_ORG}/models/<int:model_id>"
_VERSION = f"{_MODEL}/versions/<int:number>"
_DEPLOYMENT = f"{_ORG}/deployments/<int:deployment_id>"

PAGES: dict[str, Page] = {
    # gateway: sign-in, orgs, the overview, keys and members
    "home": Page("gateway", ""),
    "signup": Page("gateway", "signup"),
    "signin": Page("gateway", "signin"),
    "signout": Page("gateway", "signout"),
    "console-home": Page("gateway", "console/"),
    "console-switch-org": Page("gateway", "console/switch"),
    "console-org-create": Page("gateway", "console/orgs/new"),
    "console-org": Page("gateway", f"{_ORG}/"),
    "console-api-keys": Page("gateway", f"{_ORG}/api-keys"),
    "console-api-key-revoke": Page("gateway", f"{_ORG}/api-keys/<int:key_id>/revoke"),
    "console-members": Page("gateway", f"{_ORG}/members"),
    "console-webhooks": Page("gateway", f"{_ORG}/webhooks"),
    "console-webhook": Page("gateway", f"{_ORG}/webhooks/<int:endpoint_id>"),
    "console-webhook-delivery": Page(
        "gateway", f"{_ORG}/webhooks/<int:endpoint_id>/deliveries/<int:delivery_id>"
    ),
    # dataset
    "console-datasets": Page("dataset", f"{_ORG}/datasets"),
    "console-dataset-upload": Page("dataset", f"{_ORG}/datasets/new"),
    "console-dataset": Page("dataset", _DATASET),
    "console-dataset-columns": Page("dataset", f"{_DATASET}/columns"),
    "console-dataset-row": Page("dataset", f"{_DATASET}/rows/<int:number>"),
    "console-dataset-row-delete": Page("dataset", f"{_DATASET}/rows/<int:number>/delete"),
    "console-dataset-snapshots": Page("dataset", f"{_DATASET}/snapshots"),
    "console-snapshot": Page("dataset", f"{_ORG}/snapshots/<int:snapshot_id>"),
    # training
    "console-models": Page("training", f"{_ORG}/models"),
    "console-model-create": Page("training", f"{_ORG}/models/new"),
    "console-model": Page("training", _MODEL),
    "console-model-version-create": Page("training", f"{_MODEL}/versions/new"),
    "console-model-version": Page("training", _VERSION),
    "console-model-version-cancel": Page("training", f"{_VERSION}/cancel"),
    "console-policies": Page("training", f"{_ORG}/policies"),
    "console-policy-create": Page("training", f"{_ORG}/policies/new"),
    "console-policy": Page("training", f"{_ORG}/policies/<int:policy_id>"),
    "console-policy-evaluate": Page("training", f"{_ORG}/policies/<int:policy_id>/evaluate"),
    "console-policy-evaluation": Page(
        "training", f"{_ORG}/policies/<int:policy_id>/evaluations/<int:evaluation_id>"
    ),
    "console-policy-diff": Page("training", f"{_ORG}/policies/<int:policy_id>/diff"),
    # annotation
    "console-labeling": Page("annotation", f"{_ORG}/labeling"),
    "console-labeling-dataset": Page("annotation", f"{_ORG}/labeling/<int:dataset_id>"),
    "console-labeling-review": Page("annotation", f"{_ORG}/labeling/<int:dataset_id>/review"),
    # inference
    "console-deployments": Page("inference", f"{_ORG}/deployments"),
    "console-deployment-create": Page("inference", f"{_ORG}/deployments/new"),
    "console-deployment": Page("inference", _DEPLOYMENT),
    "console-deployment-stop": Page("inference", f"{_DEPLOYMENT}/stop"),
    "console-usage": Page("inference", f"{_ORG}/usage"),
    "console-batches": Page("inference", f"{_ORG}/batches"),
    "console-batch": Page("inference", f"{_ORG}/batches/<int:batch_id>"),
    "console-batch-cancel": Page("inference", f"{_ORG}/batches/<int:batch_id>/cancel"),
    # billing
    "console-billing": Page("billing", f"{_ORG}/billing"),
    "console-billing-plan": Page("billing", f"{_ORG}/billing/plan"),
    "console-billing-portal": Page("billing", f"{_ORG}/billing/portal"),
}

_PARAMETER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")


def page_path(name: str, **kwargs: Any) -> str:
    """The absolute path of a console page, e.g. `page_path("console-model", org="acme", model_id=4)`."""
    try:
        page = PAGES[name]
    except KeyError:
        raise KeyError(f"no console page named {name!r} in the route table (arbiter.config.routes)") from None

    def fill(match: re.Match[str]) -> str:
        key = match["name"]
        if key not in kwargs:
            raise KeyError(f"page {name!r} needs {key}=...")
        return quote(str(kwargs[key]), safe="")

    return "/" + _PARAMETER.sub(fill, page.route)


def page(name: str, view: Callable[..., Any]) -> URLPattern:
    """The URL pattern of a console page, routed as the table says (used by the services' console URLconfs)."""
    return path(PAGES[name].route, view, name=name)

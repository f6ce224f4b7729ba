"""The classify fast path: single calls with an API key skip the parts of the request pipeline that do nothing
for them.

A classification authenticated by an API key needs no session, CSRF check, message storage, URL resolution or
DRF dispatch, yet those cost more CPU than the model itself for a single text. This middleware, placed right
after the request log, answers `POST /api/v1/orgs/{org}/deployments/{id}/classify` itself when everything
about the call is ordinary: a Bearer key that authenticates (`authenticate_api_key`, cached), belongs to the
org in the URL and holds `inference`; a live deployment of that org; a JSON body whose `inputs` validate; no
`Idempotency-Key`; the org's plan allowing it. The checks and the work are the same functions the DRF view
calls (`inputs_validate`, `deployment_classify`, with the same usage), and the answer has the same body.

In `arbiter serve` the same calls are answered one step earlier, below Django's request handler
(`ClassifyFastPathWSGI`, wrapping the WSGI application): no request signals (which walk every database alias
twice per request), no URL-prefix bookkeeping, no middleware chain. What those would have done for this call is
done here: a thread's database connections are closed when unusable or past their age (as `request_started`
does), the answer gets the security middleware's headers and the request log's line, and an unexpected error
becomes Django's error response. With tracing on it stays out of the way, so that every request has its span.

Anything else, including every error, goes on down the normal pipeline, which answers it as it always did
(the same 401, 403, 404, 409, 400, 402 or 429). A fallback never repeats work: the only errors after which it
happens are raised before the model runs and before anything is recorded. A cascade deployment (a trained model
paired with a policy, `services.inference.cascade`) and a policy's deployment (runtime `llm`) go down the normal
pipeline too: a policy's error is a 502 raised after the LLM was called (a fallback would call it again), and
the LLM call dwarfs what the pipeline costs.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from cachetools import TTLCache
from django.conf import settings
from django.core.handlers.exception import response_for_exception
from django.core.handlers.wsgi import WSGIRequest
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.middleware.security import SecurityMiddleware
from rest_framework.exceptions import AuthenticationFailed

from arbiter.api.errors import ApiError
from arbiter.api.middleware import log_request
from arbiter.api.parsers import unstorable_text_at
from arbiter.tenancy.authentication import authenticate_api_key
from arbiter.tenancy.scopes import holds
from arbiter.tenancy.scoping import org_scope

if TYPE_CHECKING:
    from services.inference.models import Deployment

# Set in the WSGI environ of a call the WSGI wrapper left to Django, so the middleware does not look again.
DECLINED = "arbiter.classify_fast_path.declined"

CLASSIFY_PATH = re.compile(r"^/api/v1/orgs/(?P<org>[^/]+)/deployments/(?P<pk>[0-9]{1,18})/classify/?$")


class ClassifyFastPath:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if (
            request.method == "POST"
            and "HTTP_IDEMPOTENCY_KEY" not in request.META
            and DECLINED not in request.META  # the WSGI wrapper looked at this call already
        ):
            match = CLASSIFY_PATH.match(request.path_info)
            if match is not None:
                answer = classify_fast(request, org_slug=match["org"], deployment_id=int(match["pk"]))
                if answer is not None:
                    return answer
        return self.get_response(request)


class ClassifyFastPathWSGI:
    """The fast path as a WSGI wrapper: ordinary classify calls are answered before Django's handler runs."""

    def __init__(self, application: Callable[..., Iterable[bytes]]) -> None:
        self.application = application
        self.security = SecurityMiddleware(lambda request: HttpResponse())

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST" and "HTTP_IDEMPOTENCY_KEY" not in environ:
            match = CLASSIFY_PATH.match(environ.get("PATH_INFO", ""))
            if match is not None:
                started = time.perf_counter()
                request = WSGIRequest(environ)
                _connections_refresh()
                try:
                    response = classify_fast(request, org_slug=match["org"], deployment_id=int(match["pk"]))
                except Exception as error:  # noqa: BLE001 - answered as Django's handler answers it
                    response = response_for_exception(request, error)
                if response is not None:
                    response = self.security.process_response(request, response)
                    log_request(request, response, started)
                    start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
                    return [response.content]
                environ[DECLINED] = True
                if hasattr(request, "_body"):
                    # The body was read to look at it: the normal pipeline reads it again from here.
                    environ["wsgi.input"] = io.BytesIO(request.body)
        return self.application(environ, start_response)


# The databases this path reads and writes: identity (the API key and its last use) and inference (deployments,
# entitlements, usage and its events).
_ALIASES = ("default", "inference")


def _connections_refresh() -> None:
    """What Django's `request_started` does for the database, for the connections this path uses: close this
    thread's that broke or outlived CONN_MAX_AGE, so the next query opens a fresh one (never one inside a
    transaction: tests hold one). The thread's other connections are used, and refreshed, only by requests that
    go through Django's handler; walking every alias here cost about 5% of the path's time."""
    for alias in _ALIASES:
        connection = connections[alias]
        if connection.connection is not None and not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def _body(request: HttpRequest) -> dict[str, Any] | None:
    if request.content_type != "application/json":
        return None
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if limit is not None and length > limit:
        return None
    try:
        body = json.loads(request.body)
    except ValueError:
        return None
    if not isinstance(body, dict) or unstorable_text_at(body) is not None:
        return None
    return body


# Live deployments this process looked up recently, by (org, id): one read per
# ARBITER_INFERENCE_DEPLOYMENT_CACHE_SECONDS instead of one per call. A stop made by this process is seen at once
# (`deployment_forget`); one made by another replica within that time.
_deployments: TTLCache[tuple[int, int], Deployment] | None = None
_deployments_lock = threading.Lock()


def _live_deployment(org_id: int, deployment_id: int) -> Deployment | None:
    global _deployments
    from services.inference.conf import inference_settings
    from services.inference.models import Deployment, DeploymentStatus

    ttl = inference_settings().deployment_cache_seconds
    if ttl > 0:
        with _deployments_lock:
            if _deployments is None or _deployments.ttl != ttl:
                _deployments = TTLCache(maxsize=10_000, ttl=ttl)
            cached = _deployments.get((org_id, deployment_id))
        if cached is not None:
            return cached
    deployment = (
        Deployment.objects.unscoped()
        .filter(org_id=org_id, pk=deployment_id, status=DeploymentStatus.LIVE)
        .first()
    )
    if deployment is not None and ttl > 0:
        with _deployments_lock:
            assert _deployments is not None
            _deployments[(org_id, deployment_id)] = deployment
    return deployment


def deployment_forget(deployment_id: int | None = None) -> None:
    """Forget a cached deployment (stopped by this process), or every one (tests)."""
    with _deployments_lock:
        if _deployments is not None:
            for key in [k for k in _deployments if deployment_id is None or k[1] == deployment_id]:
                _deployments.pop(key, None)


def classify_fast(request: HttpRequest, *, org_slug: str, deployment_id: int) -> HttpResponse | None:
    """The answer of an ordinary classify call, or None to let the normal pipeline answer."""
    from services.inference import logic

    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        _, key = authenticate_api_key(token.strip())
    except AuthenticationFailed:
        return None
    if key.org.slug != org_slug or not holds(frozenset(key.scopes), "inference"):
        return None
    body = _body(request)
    if body is None:
        return None
    deployment = _live_deployment(key.org_id, deployment_id)
    if deployment is None or deployment.is_cascade or deployment.runtime == "llm":
        return None
    try:
        texts = logic.inputs_validate(body.get("inputs"), field="inputs")
        with org_scope(key.org_id):
            classification = logic.deployment_classify(
                deployment=deployment,
                texts=texts,
                caller=logic.Caller(org_id=key.org_id, api_key_id=key.pk, user_id=None),
                endpoint="classify",
            )
    except ApiError:
        return None  # raised before the model ran and before anything was recorded
    payload = logic.classify_answer(deployment=deployment, classification=classification)
    # As DRF's JSON renderer writes it (compact, UTF-8), with the headers the skipped middleware would add.
    content = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    response = HttpResponse(content, content_type="application/json")
    response["Content-Length"] = str(len(content))
    response["Allow"] = "POST, OPTIONS"
    response["X-Frame-Options"] = settings.X_FRAME_OPTIONS
    return response

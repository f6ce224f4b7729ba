"""The classify fast path answers ordinary API-key calls exactly as the DRF view does, in fewer queries, and
leaves every other call (and every error) to the normal pipeline; under `arbiter serve` it answers them below
Django's handler (`ClassifyFastPathWSGI`), with the same answer and headers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from rest_framework.test import APIClient, APIRequestFactory

from arbiter.testing.queries import queries_captured
from arbiter.testing.tenants import Tenant, assert_not_found
from services.inference.models import Deployment, UsageDay
from services.inference.serving.fastpath import ClassifyFastPathWSGI
from tests.inference.conftest import InferenceApi

pytestmark = pytest.mark.django_db(databases="__all__")


def without_id(body: dict[str, Any]) -> dict[str, Any]:
    assert body.pop("id").startswith("clf-")
    return body


def test_an_ordinary_call_is_answered_as_the_view_answers_it_in_fewer_queries(
    api: InferenceApi, artifact_key: str
) -> None:
    deployment = api.deploy({"model": api.train(artifact_key)["model_id"]})
    url = api.url(f"/deployments/{deployment['id']}/classify")
    texts = {"inputs": ["you are an idiot", "have a nice day"]}
    api.client.post(url, texts, format="json")  # both paths start with the model loaded and the key cached

    with queries_captured() as fast_queries:
        fast = api.client.post(url, texts, format="json")
    # An Idempotency-Key is one of the things only the full pipeline handles.
    with queries_captured() as full_queries:
        full = api.client.post(url, texts, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert fast.status_code == full.status_code == 200
    assert without_id(fast.json()) == without_id(full.json())
    assert fast["Content-Type"] == "application/json"
    assert dict(fast.headers) == dict(full.headers)
    assert sum(fast_queries.counts.values()) < sum(full_queries.counts.values()), fast_queries.listing()
    usage = UsageDay.objects.unscoped().get(org_id=api.tenant.org.pk, deployment_id=deployment["id"])
    assert (usage.requests, usage.units) == (3, 6)  # each call counted once, whichever path took it


def test_every_unusual_call_gets_the_normal_answer(
    api: InferenceApi, artifact_key: str, victim: Tenant
) -> None:
    deployment = api.deploy({"model": api.train(artifact_key)["model_id"]})
    path = f"/deployments/{deployment['id']}/classify"
    url = api.url(path)

    bad = api.client.post(url, {"inputs": ["ok", 3]}, format="json")
    assert bad.status_code == 400 and "inputs" in bad.content.decode()
    nul = api.client.post(url, {"inputs": ["a\x00b"]}, format="json")
    assert nul.status_code == 400 and "NUL" in nul.content.decode()
    assert api.client.post(url, "inputs=x", content_type="text/plain").status_code == 415

    no_scope = api.tenant.client(["models:read"]).post(url, {"inputs": ["x"]}, format="json")
    assert no_scope.status_code == 403 and "inference" in no_scope.json()["error"]["message"]
    anonymous = APIClient().post(url, {"inputs": ["x"]}, format="json")
    assert anonymous.status_code == 401
    wrong_key = APIClient()
    wrong_key.credentials(HTTP_AUTHORIZATION="Bearer arb_not-a-key")
    assert wrong_key.post(url, {"inputs": ["x"]}, format="json").status_code == 401

    # Another org's key, on the tenant's org and under its own: the same 404 as any missing deployment.
    thief = victim.client(["admin"])
    assert_not_found(thief.post(url, {"inputs": ["x"]}, format="json"))
    assert_not_found(thief.post(victim.url(path), {"inputs": ["x"]}, format="json"))

    assert api.client.delete(api.url(f"/deployments/{deployment['id']}")).status_code == 200
    stopped = api.client.post(url, {"inputs": ["x"]}, format="json")
    assert stopped.status_code == 409 and stopped.json()["error"]["code"] == "deployment_not_live"
    assert not UsageDay.objects.unscoped().filter(org_id=victim.org.pk).exists()


def test_a_deployment_stopped_through_another_replica_stops_answering_within_the_cache_time(
    api: InferenceApi, artifact_key: str, override_arbiter_settings
) -> None:
    override_arbiter_settings(ARBITER_INFERENCE_DEPLOYMENT_CACHE_SECONDS="0.5")
    deployment = api.deploy({"model": api.train(artifact_key)["model_id"]})
    assert api.classify(deployment["id"], ["hello"]).status_code == 200
    # Another replica's stop: the row changes, this process's cache does not hear of it.
    Deployment.objects.unscoped().filter(pk=deployment["id"]).update(status="stopped")
    assert api.classify(deployment["id"], ["hello"]).status_code == 200
    time.sleep(0.6)
    assert api.classify(deployment["id"], ["hello"]).status_code == 409


class Served:
    """The WSGI application as `arbiter serve` runs it (the fast path around Django's handler), called with a
    test client's key; it records which calls reached Django's handler."""

    def __init__(self) -> None:
        self.handler = WSGIHandler()
        self.reached_django: list[str] = []
        self.application = ClassifyFastPathWSGI(self._django)

    def _django(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.reached_django.append(environ["PATH_INFO"])
        return self.handler(environ, start_response)

    def post(self, client: APIClient, url: str, data: Any, **extra: Any) -> tuple[int, dict[str, str], bytes]:
        if isinstance(data, str):
            request = APIRequestFactory().post(url, data, **client._credentials, **extra)
        else:
            request = APIRequestFactory().post(url, data, format="json", **client._credentials, **extra)
        answered: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            answered["status"], answered["headers"] = int(status.split()[0]), dict(headers)

        # As Django's test client does: the test's transaction holds the connection, so it is not recycled.
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            answer = self.application(request.environ, start_response)
            body = b"".join(answer)
            getattr(answer, "close", lambda: None)()
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)
        return answered["status"], answered["headers"], body


def test_served_ordinary_calls_skip_djangos_handler_with_the_same_answer_and_headers(
    api: InferenceApi, artifact_key: str
) -> None:
    served = Served()
    deployment = api.deploy({"model": api.train(artifact_key)["model_id"]})
    url = api.url(f"/deployments/{deployment['id']}/classify")
    texts = {"inputs": ["you are an idiot", "have a nice day"]}

    status, headers, body = served.post(api.client, url, texts)
    assert served.reached_django == []
    full = api.client.post(url, texts, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert status == full.status_code == 200
    assert without_id(json.loads(body)) == without_id(full.json())
    assert headers == dict(full.headers) | {"Content-Length": str(len(body))}
    assert headers["X-Content-Type-Options"] == "nosniff"  # the security middleware's headers, added here

    # An Idempotency-Key is for the full pipeline, which answers it from the same WSGI application.
    status, _, _ = served.post(api.client, url, texts, HTTP_IDEMPOTENCY_KEY="k-2")
    assert status == 200 and len(served.reached_django) == 1
    usage = UsageDay.objects.unscoped().get(org_id=api.tenant.org.pk, deployment_id=deployment["id"])
    assert (usage.requests, usage.units) == (3, 6)  # each call counted once, whichever path took it


def test_served_unusual_calls_reach_django_with_their_body_intact(
    api: InferenceApi, artifact_key: str, victim: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = Served()
    deployment = api.deploy({"model": api.train(artifact_key)["model_id"]})
    path = f"/deployments/{deployment['id']}/classify"
    url = api.url(path)

    # The fast path read these bodies to look at them; the view reads them again and names the field.
    from services.inference.serving import fastpath

    looked: list[str] = []
    authenticate = fastpath.authenticate_api_key
    monkeypatch.setattr(fastpath, "authenticate_api_key", lambda key: looked.append(key) or authenticate(key))
    status, _, body = served.post(api.client, url, {"inputs": ["ok", 3]})
    assert status == 400 and "inputs" in body.decode()
    assert len(looked) == 1  # by the WSGI wrapper; the middleware behind it does not look again
    status, _, body = served.post(api.client, url, {"inputs": ["a\x00b"]})
    assert status == 400 and "NUL" in body.decode()
    assert served.post(api.client, url, "inputs=x", content_type="text/plain")[0] == 415
    assert served.post(APIClient(), url, {"inputs": ["x"]})[0] == 401
    status, _, body = served.post(victim.client(["admin"]), url, {"inputs": ["x"]})
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    assert len(served.reached_django) == 5
    assert not UsageDay.objects.unscoped().filter(deployment_id=deployment["id"]).exists()

    # An unexpected failure is answered as Django's handler answers one: a 500, nothing half-sent.
    from services.inference import logic

    def broken(**_: Any) -> Any:
        raise RuntimeError("the answer could not be built")

    monkeypatch.setattr(logic, "classify_answer", broken)
    status, _, _ = served.post(api.client, url, {"inputs": ["x"]})
    assert status == 500 and len(served.reached_django) == 5


def test_a_connection_past_its_age_is_replaced_before_an_ordinary_call_uses_it() -> None:
    """What Django's `request_started` does, done by the fast path for the databases it uses (on a thread of its
    own: the test's connections are inside its transaction, which no refresh may close)."""
    import threading

    from django.db import connections

    from services.inference.serving.fastpath import _connections_refresh

    seen: dict[str, Any] = {}

    def request_thread() -> None:
        try:
            for alias in ("default", "inference"):
                connections[alias].ensure_connection()
            first = {alias: connections[alias].connection for alias in ("default", "inference")}
            _connections_refresh()
            seen["kept"] = all(connections[alias].connection is first[alias] for alias in first)
            connections["inference"].close_at = time.monotonic() - 1  # CONN_MAX_AGE ran out
            _connections_refresh()
            seen["closed"] = connections["inference"].connection is None
            seen["default_kept"] = connections["default"].connection is first["default"]
        finally:
            connections.close_all()

    thread = threading.Thread(target=request_thread)
    thread.start()
    thread.join()
    assert seen == {"kept": True, "closed": True, "default_kept": True}

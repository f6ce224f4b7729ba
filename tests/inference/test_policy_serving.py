"""A policy served like any model: written in the training service, announced by `training.completed`, deployed
and called on the native classify API, the OpenAI moderations API and the playground of the inference service;
decisions cached by (policy version, input hash), LLM calls counted, and every failure a 502 with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from django.db import transaction

from arbiter.entitlements import entitlements_cache_clear
from arbiter.events.envelope import Event
from arbiter.events.models import OutboxEvent
from arbiter.tenancy.scoping import org_scope
from arbiter.testing.images import make_image, running_image_server
from arbiter.testing.tenants import Tenant
from services.billing import logic as billing_logic
from services.inference.models import PolicyDecision
from tests.annotation import fake_llm
from tests.annotation.fake_llm import FakeLlm
from tests.billing.conftest import deliver as deliver_to
from tests.billing.conftest import published as published_events
from tests.inference.conftest import InferenceApi, deliver

pytestmark = pytest.mark.django_db(databases="__all__", transaction=False)

CATEGORIES = [
    {"name": "insult", "definition": "Name-calling aimed at a person.", "violates": "idiot, moron"},
    {"name": "spam", "definition": "Unsolicited advertising.", "violates": "buy now, cheap pills"},
]


@pytest.fixture
def fake(override_arbiter_settings: Any, fresh_models: None) -> Iterator[FakeLlm]:
    override_arbiter_settings(
        ARBITER_LLM_ALLOWED_NETWORKS="127.0.0.0/8",
        ARBITER_LLM_TIMEOUT_SECONDS="1",
        ARBITER_LLM_RETRY_MAX_SECONDS="0.1",
        ARBITER_LLM_MAX_ATTEMPTS="1",
    )
    yield from fake_llm.serve()


def judge() -> fake_llm.Answer:
    def choose(text: str) -> fake_llm.Answer:
        content = text.rsplit("<<<", 1)[-1]
        if "idiot" in content:
            return fake_llm.decision("unsafe", "insult", "Calls someone an idiot.", p_unsafe=0.92)
        if "buy now" in content:
            return fake_llm.decision("unsafe", "spam", "An advertisement.", p_unsafe=0.81)
        return fake_llm.decision("safe", None, "Ordinary conversation.", p_unsafe=0.05)

    return fake_llm.by_content(choose)


def write_policy(tenant: Tenant, fake: FakeLlm) -> dict[str, Any]:
    """Write the policy in the training service and hand its `training.completed` to the inference service."""
    body = {
        "name": "house-rules",
        "provider": {"base_url": fake.base_url, "model": "judge", "api_key": "sk-x-1234", "logprobs": True},
        "categories": CATEGORIES,
    }
    response = tenant.client(["models:write"]).post(tenant.url("/policies"), body, format="json")
    assert response.status_code == 201, response.content
    policy = response.json()
    row = OutboxEvent.objects.using("training").filter(type="training.completed").order_by("-id").first()
    assert row is not None
    deliver(Event.from_dict(row.body))
    return dict(policy)


def deploy(api: InferenceApi, tenant: Tenant, fake: FakeLlm) -> tuple[dict[str, Any], dict[str, Any]]:
    policy = write_policy(tenant, fake)
    deployment = api.deploy({"model": policy["id"], "version": 1, "name": "house-rules"})
    assert deployment["status"] == "live" and deployment["runtime"] == "llm", deployment
    return policy, deployment


def test_native_classify_answers_per_category_with_the_reason(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm
) -> None:
    fake.script(judge())
    _, deployment = deploy(api, tenant, fake)
    response = api.classify(deployment["id"], ["you idiot", "lovely weather"])
    assert response.status_code == 200, response.content
    first, second = response.json()["results"]
    assert first["insult"]["flagged"] and first["insult"]["reason"] == "Calls someone an idiot."
    assert first["insult"]["label_scores"]["unsafe"] == pytest.approx(0.92)
    assert not first["spam"]["flagged"] and first["spam"]["label_scores"]["unsafe"] == 0.0
    assert not second["insult"]["flagged"] and second["insult"]["reason"] == "Ordinary conversation."
    sent = [fake.last_text(r) for r in fake.requests]
    assert all("Name-calling aimed at a person." in text for text in sent)
    assert any("you idiot" in text for text in sent) and any("lovely weather" in text for text in sent)
    assert all(r["body"]["logprobs"] for r in fake.requests)


def test_decisions_are_cached_per_version_and_input_and_counted(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm
) -> None:
    fake.script(judge())
    _, deployment = deploy(api, tenant, fake)
    assert api.classify(deployment["id"], ["you idiot"]).status_code == 200
    again = api.classify(deployment["id"], ["you idiot", "you idiot"])
    assert again.status_code == 200 and again.json()["results"][1]["insult"]["flagged"]
    assert len(fake.requests) == 1
    (cached,) = PolicyDecision.objects.unscoped().filter(org_id=tenant.org.pk)
    assert cached.llm_calls == 1 and cached.decision["category"] == "insult"
    usage = api.client.get(api.url("/usage")).json()
    assert usage["llm"]["calls"] == 1 and usage["llm"]["decisions"] == 1


def test_openai_moderations_name_the_policy_categories(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm, live_server: Any
) -> None:
    fake.script(judge())
    deploy(api, tenant, fake)
    key = tenant.key(["inference"])
    with openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0) as client:
        result = client.moderations.create(model="house-rules", input=["buy now cheap", "hello"])
    spam, hello = result.results
    assert spam.flagged and spam.categories.model_extra == {"insult": False, "spam": True}
    assert spam.category_scores.model_extra["spam"] == pytest.approx(0.81)
    assert not hello.flagged


@pytest.mark.parametrize(
    ("answer", "code", "raw"),
    [
        (fake_llm.prose(), "policy_malformed_answer", "probably fine"),
        (
            fake_llm.decision("unsafe", "violence", "Not in the policy."),
            "policy_unknown_category",
            "violence",
        ),
        (fake_llm.refusal("No."), "policy_model_refused", "No."),
        (fake_llm.slow(3, "x"), "policy_timeout", None),
    ],
    ids=["prose", "unknown-category", "refusal", "timeout"],
)
def test_a_failed_decision_is_a_502_never_safe(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm, answer: fake_llm.Answer, code: str, raw: str | None
) -> None:
    fake.script(judge())
    _, deployment = deploy(api, tenant, fake)
    fake.script(answer)
    response = api.classify(deployment["id"], ["hello there"])
    assert response.status_code == 502, response.content
    error = response.json()["error"]
    assert error["code"] == code and error["message"].startswith("inputs[0]: the policy model gave no usable")
    if raw is not None:
        assert raw in error["details"]["raw"]
    assert not PolicyDecision.objects.unscoped().filter(org_id=tenant.org.pk).exists()


def test_a_failed_input_is_sent_to_the_model_once_though_the_call_came_with_an_api_key(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm
) -> None:
    # The classify fast path leaves policies to the normal pipeline: a fallback after the 502 would ask again.
    fake.script(judge())
    _, deployment = deploy(api, tenant, fake)
    fake.script(fake_llm.refusal("No."))
    before = len(fake.requests)
    response = api.classify(deployment["id"], ["hello again"])
    assert response.status_code == 502, response.content
    assert len(fake.requests) - before == 1


def test_the_playground_tries_a_policy_version(api: InferenceApi, tenant: Tenant, fake: FakeLlm) -> None:
    fake.script(judge())
    policy = write_policy(tenant, fake)
    response = api.client.post(
        api.url(f"/models/{policy['id']}/versions/1/playground"), {"input": "you idiot"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["results"][0]["insult"]["flagged"]


def test_llm_calls_are_billed_once_per_decision_and_refused_beyond_the_plan(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm, override_arbiter_settings: Any
) -> None:
    # A plan of 3 LLM calls a month, refused beyond (no overage).
    override_arbiter_settings(ARBITER_BILLING_PLANS='{"free": {"meters": {"llm_call": {"included": 3}}}}')
    entitlements_cache_clear()
    fake.script(judge())
    policy, deployment = deploy(api, tenant, fake)
    assert api.classify(deployment["id"], ["you idiot", "hello", "you idiot"]).status_code == 200
    assert api.classify(deployment["id"], ["hello"]).status_code == 200  # cached: no call, nothing billed
    billed = [
        e for e in published_events("usage.recorded", alias="inference") if e.data["meter"] == "llm_call"
    ]
    assert [(e.data["units"], e.data["model_id"], e.data["version"]) for e in billed] == [
        (1, policy["id"], 1),
        (1, policy["id"], 1),
    ]
    # Billing's ledger takes them; its announcement reaches this service, which then refuses two new texts.
    for event in billed:
        deliver_to(event, service="billing")
    with transaction.atomic(using="billing"), org_scope(tenant.org.pk):
        account = billing_logic.account_get(org_id=tenant.org.pk)
        billing_logic.entitlements_publish(account=account, reason="usage")
    announcement = published_events("entitlements.changed", alias="billing")[-1]
    assert announcement.data["meters"]["llm_call"] == {"included": 3, "overage": False, "used": 2}
    deliver_to(announcement, service="inference")
    before = len(fake.requests)
    refused = api.classify(deployment["id"], ["buy now", "something new"])
    assert refused.status_code == 429, refused.content
    assert "LLM calls" in refused.json()["error"]["message"] and len(fake.requests) == before
    assert api.classify(deployment["id"], ["buy now"]).status_code == 200  # one more fits


def test_images_reach_a_vision_policy_through_classify_and_the_openai_sdk(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm, live_server: Any, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(ARBITER_FETCH_ALLOWED_NETWORKS="127.0.0.1/32")

    def looks(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        # A vision model: it sees whether the message carries an image, and the words beside it.
        users = [m for m in body["messages"] if m["role"] == "user"]
        seen = any(isinstance(m["content"], list) and "image_url" in str(m["content"]) for m in users)
        if seen:
            return fake_llm.decision("unsafe", "spam", "A picture of an advertisement.", p_unsafe=0.9)(body)
        return judge()(body)

    fake.script(looks)
    policy = write_policy(tenant, fake)
    versions = tenant.client(["models:write"]).post(
        tenant.url(f"/policies/{policy['id']}/versions"),
        {"provider": {"base_url": fake.base_url, "model": "judge", "vision": True}},
        format="json",
    )
    assert versions.status_code == 201, versions.content
    row = OutboxEvent.objects.using("training").filter(type="training.completed").order_by("-id").first()
    assert row is not None
    deliver(Event.from_dict(row.body))
    deployment = api.deploy({"model": policy["id"], "version": 2, "name": "house-eyes"})
    with running_image_server() as images:
        poster = images.serve("/poster.png", make_image("PNG", size=(40, 30), color=(250, 10, 10)))
        answer = api.classify(
            deployment["id"],
            ["hello", {"image_url": poster, "text": "seen on a wall"}, {"image_url": poster}],
        )
        assert answer.status_code == 200, answer.content
        hello, poster_with_text, poster_alone = answer.json()["results"]
        assert not hello["spam"]["flagged"]
        assert poster_with_text["spam"]["flagged"] and poster_with_text["spam"]["reason"].startswith(
            "A picture"
        )
        assert poster_alone["spam"]["flagged"]
        # The model got the checked bytes as a data: URL (never the caller's URL), with the words beside them.
        sent = fake.images()
        assert len(sent) == 2 and all(url.startswith("data:image/png;base64,") for url in sent)
        assert any("seen on a wall" in fake.last_text(r) for r in fake.requests)
        bad = api.classify(deployment["id"], [{"image_url": images.url("/missing.png")}])
        assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("inputs[0]:")
        nul = api.classify(deployment["id"], ["a\x00b"])
        assert nul.status_code == 400 and "NUL" in nul.json()["error"]["message"]

        key = tenant.key(["inference"])
        with openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0) as client:
            result = client.moderations.create(
                model="house-eyes",
                input=[{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": poster}}],
            )
    (moderated,) = result.results
    assert moderated.flagged and moderated.categories.model_extra["spam"] is True
    assert moderated.category_applied_input_types.model_extra["spam"] == ["text", "image"]

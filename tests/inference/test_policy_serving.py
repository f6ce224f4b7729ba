"""A policy served like any model: written in the training service, announced by `training.completed`, deployed
and called on the native classify API, the OpenAI moderations API and the playground of the inference service;
decisions cached by (policy version, input hash), LLM calls counted, and every failure a 502 with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from arbiter.events.envelope import Event
from arbiter.events.models import OutboxEvent
from arbiter.testing.tenants import Tenant
from services.inference.models import PolicyDecision
from tests.annotation import fake_llm
from tests.annotation.fake_llm import FakeLlm
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

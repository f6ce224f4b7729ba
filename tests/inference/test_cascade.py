"""A cascade deployment: a trained model paired with a policy. The trained model answers every input; the inputs
whose score of a handed-over category lies inside the uncertainty band go to the policy (a fake OpenAI-compatible
LLM on loopback, which records what reached it), whose decision and reason replace the model's for them. The
deployment reports how many requests and inputs each decided and what the LLM calls cost."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client

from arbiter.events.envelope import Event
from arbiter.events.models import OutboxEvent
from arbiter.testing.tenants import Tenant
from services.inference.logic import deployments_waiting_expire, deployments_waiting_resume
from services.inference.models import Deployment, PolicyDecision
from tests.annotation import fake_llm
from tests.annotation.fake_llm import FakeLlm
from tests.inference.conftest import InferenceApi, deliver, published
from tests.inference.test_policy_serving import fake, write_policy

__all__ = ["fake"]  # the policy tests' fake LLM fixture, used here too

pytestmark = pytest.mark.django_db(databases="__all__", transaction=False)

BAND = [0.2, 0.85]
# The trained model is sure of these (the toxic score is far outside the band) ...
SURE_TOXIC, SURE_SAFE = "you are an idiot", "lovely weather"
# ... and unsure of these: a television, and an insult it scores below its usual confidence.
TV, THANKS_IDIOT = "the idiot box is on", "thanks idiot"


def judge() -> fake_llm.Answer:
    def choose(text: str) -> fake_llm.Answer:
        content = text.rsplit("<<<", 1)[-1]
        if "idiot box" in content:
            return fake_llm.decision(
                "safe", None, "A nickname for a television, aimed at no one.", p_unsafe=0.1
            )
        if "idiot" in content:
            return fake_llm.decision("unsafe", "insult", "Calls someone an idiot.", p_unsafe=0.92)
        return fake_llm.decision("safe", None, "Ordinary conversation.", p_unsafe=0.05)

    return fake_llm.by_content(choose)


@pytest.fixture
def trained(api: InferenceApi, artifact_key: str) -> dict[str, Any]:
    """The trained version, and a check that the inputs above fall where the tests expect: its scores are what
    decide which inputs reach the LLM."""
    data = api.train(artifact_key, model_name="toxicity")
    plain = api.deploy({"model": data["model_id"], "version": 1, "name": "plain"})
    answer = api.classify(plain["id"], [SURE_TOXIC, SURE_SAFE, TV, THANKS_IDIOT]).json()["results"]
    scores = [result["toxicity"]["label_scores"]["toxic"] for result in answer]
    low, high = BAND
    assert scores[0] > high and scores[1] < low, scores
    assert low <= scores[2] <= high and low <= scores[3] <= high, scores
    return data


def cascade_body(trained: dict[str, Any], policy_id: int, **cascade: Any) -> dict[str, Any]:
    return {
        "model": trained["model_id"],
        "version": 1,
        "name": "toxicity-with-policy",
        "cascade": {
            "policy": {"model": policy_id, "version": 1},
            "band": BAND,
            "heads": {"toxicity": "insult"},
            **cascade,
        },
    }


def sent_texts(fake: FakeLlm) -> list[str]:
    return [fake.last_text(request).rsplit("<<<", 1)[-1] for request in fake.requests]


def test_the_policy_decides_only_inside_the_band_and_the_share_is_reported(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm, trained: dict[str, Any]
) -> None:
    fake.script(judge())
    policy = write_policy(tenant, fake)
    deployment = api.deploy(cascade_body(trained, policy["id"]))
    assert deployment["status"] == "live", deployment
    assert deployment["cascade"]["policy"] == {"model": policy["id"], "version": 1}
    assert deployment["cascade"]["band"] == BAND and deployment["cascade"]["heads"] == {"toxicity": "insult"}

    # An API key's call: the fast path leaves a cascade to the full pipeline, which answers it.
    response = api.classify(deployment["id"], [SURE_TOXIC, TV, SURE_SAFE, THANKS_IDIOT])
    assert response.status_code == 200, response.content
    sure_toxic, tv, sure_safe, thanks = response.json()["results"]

    # Only the inputs the model was unsure of reached the LLM, in one request's worth of calls.
    sent = sent_texts(fake)
    assert sorted(any(text in s for s in sent) for text in (TV, THANKS_IDIOT)) == [True, True]
    assert not any(SURE_TOXIC in s or SURE_SAFE in s for s in sent), sent
    assert len(fake.requests) == 2

    assert sure_toxic["toxicity"]["decided_by"] == "model" and sure_toxic["toxicity"]["flagged"]
    assert "reason" not in sure_toxic["toxicity"]
    assert sure_safe["toxicity"]["decided_by"] == "model" and not sure_safe["toxicity"]["flagged"]
    # The policy decides what the model was unsure of, and says why.
    assert tv["toxicity"]["decided_by"] == "policy"
    assert tv["toxicity"]["label"] == "safe" and not tv["toxicity"]["flagged"]
    assert tv["toxicity"]["reason"] == "A nickname for a television, aimed at no one."
    assert tv["toxicity"]["policy_category"] == "insult"
    assert thanks["toxicity"]["decided_by"] == "policy" and thanks["toxicity"]["flagged"]
    assert (
        thanks["toxicity"]["label"] == "toxic" and thanks["toxicity"]["reason"] == "Calls someone an idiot."
    )
    assert thanks["toxicity"]["label_scores"]["toxic"] == pytest.approx(0.92, abs=1e-3)
    # A head not handed over stays the model's.
    assert {result["topic"]["decided_by"] for result in (sure_toxic, tv, sure_safe, thanks)} == {"model"}

    # The same insult again is answered from the policy's cache: no new LLM call, no new cost.
    again = api.classify(deployment["id"], [THANKS_IDIOT, SURE_SAFE])
    assert again.status_code == 200 and again.json()["results"][0]["toxicity"]["decided_by"] == "policy"
    assert len(fake.requests) == 2
    assert api.classify(deployment["id"], [SURE_TOXIC]).status_code == 200

    usage = api.client.get(api.url(f"/deployments/{deployment['id']}")).json()["cascade"]["usage"]
    assert usage == {
        "requests": 3,
        "inputs": 7,
        "model_requests": 1,
        "policy_requests": 2,
        "model_inputs": 4,
        "policy_inputs": 3,
        "policy_share": round(3 / 7, 4),
        # The fake answers each call with 30 prompt and 5 completion tokens.
        "llm": {"calls": 2, "prompt_tokens": 60, "completion_tokens": 10},
    }
    events = published("usage.recorded", deployment_id=deployment["id"])
    assert sum(event.data["cascade"]["policy_units"] for event in events) == 3
    assert sum(event.data["cascade"]["llm_calls"] for event in events) == 2

    # The console's deployment page shows the same split.
    browser = Client()
    browser.force_login(tenant.owner)
    page = browser.get(f"/console/{tenant.slug}/deployments/{deployment['id']}")
    assert page.status_code == 200
    text = page.content.decode()
    shown = dict(re.findall(r'data-cascade="([a-z-]+)">([^<]+)<', text))
    assert shown["model-requests"] == "1" and shown["policy-requests"] == "2"
    assert shown["model-inputs"] == "4" and shown["policy-inputs"] == "3"
    assert shown["share"] == "42.9%" and shown["llm-calls"] == "2"
    assert html.unescape(shown["llm-tokens"]) == "60 prompt + 10 completion"
    assert f"/policies/{policy['id']}" in text


def test_moderations_answer_with_the_policy_s_decision_inside_the_band(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm, trained: dict[str, Any]
) -> None:
    fake.script(judge())
    policy = write_policy(tenant, fake)
    api.deploy(cascade_body(trained, policy["id"]))
    response = api.client.post(
        "/v1/moderations", {"model": "toxicity-with-policy", "input": [TV, SURE_TOXIC]}, format="json"
    )
    assert response.status_code == 200, response.content
    tv, sure_toxic = response.json()["results"]
    assert tv["categories"]["toxicity"] is False and tv["category_scores"]["toxicity"] < 0.5
    assert sure_toxic["categories"]["toxicity"] is True
    assert sent_texts(fake) and all(TV in text for text in sent_texts(fake))


def test_a_policy_error_is_a_502_naming_the_input_never_a_silent_safe(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm, trained: dict[str, Any]
) -> None:
    fake.script(judge())
    policy = write_policy(tenant, fake)
    deployment = api.deploy(cascade_body(trained, policy["id"]))
    fake.script(fake_llm.prose())
    response = api.classify(deployment["id"], [SURE_SAFE, TV])
    assert response.status_code == 502, response.content
    error = response.json()["error"]
    assert error["code"] == "policy_malformed_answer"
    assert error["message"].startswith("inputs[1]: the policy model gave no usable decision")
    assert error["details"]["index"] == 1
    assert not PolicyDecision.objects.unscoped().filter(org_id=tenant.org.pk).exists()
    usage = api.client.get(api.url(f"/deployments/{deployment['id']}")).json()["cascade"]["usage"]
    assert usage["requests"] == 0 and usage["policy_inputs"] == 0


@pytest.mark.parametrize(
    ("cascade", "field"),
    [
        ({"band": [0.8, 0.2]}, "cascade.band"),
        ({"band": [0.3, 0.3]}, "cascade.band"),
        ({"band": [-0.1, 0.5]}, "cascade.band"),
        ({"band": [0.2, 1.5]}, "cascade.band"),
        ({"band": [0.2]}, "cascade.band"),
        ({"band": ["low", "high"]}, "cascade.band"),
        ({"heads": {}}, "cascade.heads"),
        ({"heads": {"sarcasm": "insult"}}, "cascade.heads.sarcasm"),
        ({"heads": {"toxicity": "violence"}}, "cascade.heads.toxicity"),
        ({"heads": {"topic": "spam"}}, "cascade.heads.topic"),
        ({"policy": {"version": 1}}, "cascade.policy"),
        ({"policy": {"model": "house-rules", "version": 9}}, "cascade.policy.model"),
    ],
    ids=[
        "reversed",
        "empty-band",
        "below-0",
        "above-1",
        "one-edge",
        "not-numbers",
        "no-heads",
        "unknown-head",
        "unknown-category",
        "several-flagging-labels",
        "no-policy-model",
        "unknown-policy-version",
    ],
)
def test_a_bad_cascade_is_a_400_naming_the_field(
    api: InferenceApi,
    tenant: Tenant,
    fake: FakeLlm,
    trained: dict[str, Any],
    cascade: dict[str, Any],
    field: str,
) -> None:
    policy = write_policy(tenant, fake)
    response = api.client.post(
        api.url("/deployments"), cascade_body(trained, policy["id"], **cascade), format="json"
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["message"].startswith(f"{field}: "), error
    if field == "cascade.heads.topic":
        assert "topic/spam" in error["message"]
    assert not Deployment.objects.unscoped().filter(name="toxicity-with-policy").exists()


def test_a_trained_model_is_no_policy(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm, trained: dict[str, Any]
) -> None:
    response = api.client.post(
        api.url("/deployments"), cascade_body(trained, trained["model_id"]), format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("cascade.policy.model: model")
    assert "not a policy" in response.json()["error"]["message"]


def test_another_org_s_policy_is_refused(
    api: InferenceApi, tenant: Tenant, victim: Tenant, fake: FakeLlm, trained: dict[str, Any]
) -> None:
    theirs = write_policy(victim, fake)
    response = api.client.post(api.url("/deployments"), cascade_body(trained, theirs["id"]), format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["message"] == (
        f"cascade.policy.model: model {theirs['id']} is not a policy of this org."
    )
    assert (
        not Deployment.objects.unscoped().filter(org_id=tenant.org.pk, name="toxicity-with-policy").exists()
    )
    assert fake.requests == []


def test_a_policy_version_on_its_way_is_waited_for(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm, trained: dict[str, Any]
) -> None:
    fake.script(judge())
    policy = write_policy(tenant, fake)
    body = cascade_body(trained, policy["id"])
    body["cascade"]["policy"]["version"] = 2
    deployment = api.deploy(body, load=False)
    assert deployment["reason"] == "waiting_for_version"
    assert f"version 2 of policy {policy['id']}" in deployment["message"]
    assert not published("deployment.requested", deployment_id=deployment["id"])

    # Version 2 is written; its `training.completed` reaches the inference service, and the deployment loads.
    edited = tenant.client(["models:write"]).post(
        tenant.url(f"/policies/{policy['id']}/versions"), {"instructions": "Be strict."}, format="json"
    )
    assert edited.status_code == 201, edited.content
    row = OutboxEvent.objects.using("training").filter(type="training.completed").order_by("-id").first()
    assert row is not None
    deliver(Event.from_dict(row.body))
    (requested,) = published("deployment.requested", deployment_id=deployment["id"])
    deliver(requested)
    live = api.client.get(api.url(f"/deployments/{deployment['id']}")).json()
    assert live["status"] == "live" and live["cascade"]["policy"]["version"] == 2, live
    answer = api.classify(deployment["id"], [TV]).json()["results"][0]["toxicity"]
    assert answer["decided_by"] == "policy" and any("Be strict." in str(p) for p in fake.prompts)


def test_a_policy_version_that_never_comes_fails_the_deployment_saying_which(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm, trained: dict[str, Any]
) -> None:
    policy = write_policy(tenant, fake)
    body = cascade_body(trained, policy["id"])
    body["cascade"]["policy"]["version"] = 9
    deployment = api.deploy(body, load=False)
    assert deployments_waiting_resume() == 0
    assert deployments_waiting_expire(older_than=timedelta(0)) == 1
    failed = api.client.get(api.url(f"/deployments/{deployment['id']}")).json()
    assert failed["status"] == "failed" and failed["reason"] == "version_not_found"
    assert failed["message"].startswith(
        f"Version 9 of policy {policy['id']} never reached the inference service"
    )


def test_the_console_deploys_a_cascade_and_says_what_is_wrong_with_one(
    api: InferenceApi, tenant: Tenant, fake: FakeLlm, trained: dict[str, Any]
) -> None:
    fake.script(judge())
    policy = write_policy(tenant, fake)
    browser = Client()
    browser.force_login(tenant.owner)
    url = f"/console/{tenant.slug}/deployments/new"
    form = {
        "version": f"{trained['model_id']}:1",
        "name": "console-cascade",
        "cascade_policy": f"{policy['id']}:1",
        "cascade_low": "0.2",
        "cascade_high": "0.85",
        "cascade_heads": "toxicity=insult",
    }
    assert "Pair it with a policy" in browser.get(url).content.decode()
    bad = browser.post(url, {**form, "cascade_heads": "toxicity insult"})
    assert bad.status_code == 400 and "write each as &lt;trained category&gt;=&lt;policy category&gt;" in (
        bad.content.decode()
    )
    reversed_band = browser.post(url, {**form, "cascade_low": "0.9", "cascade_high": "0.1"})
    assert reversed_band.status_code == 400 and "cascade.band" in reversed_band.content.decode()
    created = browser.post(url, form)
    assert created.status_code == 302, created.content.decode()[:2000]
    deployment = Deployment.objects.unscoped().get(org_id=tenant.org.pk, name="console-cascade")
    assert deployment.is_cascade
    detail = api.client.get(api.url(f"/deployments/{deployment.pk}")).json()
    assert detail["cascade"]["band"] == [0.2, 0.85] and detail["cascade"]["heads"] == {"toxicity": "insult"}

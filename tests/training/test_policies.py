"""The policies API (training service): write a policy, edit it into versions, evaluate a version on a labelled
snapshot with the same metrics as a trained version, and diff two versions on a frozen snapshot, against a fake
OpenAI-compatible server on loopback that decides like a policy model."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from arbiter.entitlements import entitlements_cache_clear
from arbiter.events.envelope import Event
from arbiter.events.models import OutboxEvent
from arbiter.storage import get_blob_store
from arbiter.tenancy.scoping import org_scope
from arbiter.testing.artifacts import cached_head_artifact
from arbiter.testing.tenants import Tenant, assert_not_found
from services.billing import logic as billing_logic
from services.training.models import Model, ModelVersion, PolicyEvaluation, RunState, TrainingRun
from services.training.policies import evaluation_run, evaluations_recover
from tests.annotation import fake_llm
from tests.annotation.fake_llm import FakeLlm
from tests.billing.conftest import deliver as deliver_to
from tests.billing.conftest import published as published_events
from tests.training.conftest import TOXIC, TOXICITY, published, snapshot_publish, toxicity_rows

pytestmark = pytest.mark.django_db(databases="__all__")

KEY = "sk-policy-key-0123456789abcdef"
CATEGORIES = [
    {
        "name": "insult",
        "definition": "Name-calling or contempt aimed at a person.",
        "violates": "Calling someone an idiot, moron, loser, fool or jerk.",
        "safe": "Friendly small talk.",
        "examples": [{"content": "you are a clown", "flag": "unsafe", "note": "name-calling"}],
    }
]


@pytest.fixture
def fake(override_arbiter_settings: Any) -> Iterator[FakeLlm]:
    override_arbiter_settings(
        ARBITER_LLM_ALLOWED_NETWORKS="127.0.0.0/8",
        ARBITER_LLM_TIMEOUT_SECONDS="1",
        ARBITER_LLM_RETRY_MAX_SECONDS="0.1",
        ARBITER_LLM_MAX_ATTEMPTS="1",
    )
    yield from fake_llm.serve()


def strict_judge(words: tuple[str, ...] = ("idiot", "moron", "loser", "fool", "jerk")) -> fake_llm.Answer:
    """Flags the texts containing one of `words` as insults, with a reason naming the word."""

    def choose(text: str) -> fake_llm.Answer:
        content = text.rsplit("<<<", 1)[-1]
        hit = next((w for w in words if w in content), None)
        if hit:
            return fake_llm.decision("unsafe", "insult", f"Calls the person a {hit}.", confidence=0.9)
        return fake_llm.decision("safe", None, "Friendly small talk.", confidence=0.8)

    return fake_llm.by_content(choose)


def policy_body(fake: FakeLlm, **changes: Any) -> dict[str, Any]:
    return {
        "name": "civility",
        "instructions": "Judge the message, not the person who wrote it.",
        "provider": {"base_url": fake.base_url, "model": "judge-1", "api_key": KEY},
        "categories": CATEGORIES,
        **changes,
    }


def create(tenant: Tenant, fake: FakeLlm, **changes: Any) -> dict[str, Any]:
    response = tenant.client(["models:write", "models:read"]).post(
        tenant.url("/policies"), policy_body(fake, **changes), format="json"
    )
    assert response.status_code == 201, response.content
    return dict(response.json())


def test_a_written_policy_is_a_model_version_announced_like_a_trained_one(
    tenant: Tenant, fake: FakeLlm
) -> None:
    policy = create(tenant, fake)
    assert policy["type"] == "policy" and policy["latest_version"]["number"] == 1
    shown = policy["latest_version"]["policy"]
    assert shown["provider"]["api_key_hint"] == KEY[-4:] and "api_key_encrypted" not in shown["provider"]
    assert KEY not in str(policy)
    (completed,) = [e for e in published("training.completed") if e["model_id"] == policy["id"]]
    assert completed["heads"] == [
        {"name": "insult", "labels": ["safe", "unsafe"], "multi_label": False, "negative_labels": ["safe"]}
    ]
    stored = get_blob_store().get_bytes(completed["artifact"])
    assert b"Name-calling or contempt" in stored and KEY.encode() not in stored
    model = tenant.client(["models:read"]).get(tenant.url(f"/models/{policy['id']}")).json()
    assert model["type"] == "policy"


def test_editing_makes_a_new_version_keeping_what_is_not_changed(tenant: Tenant, fake: FakeLlm) -> None:
    policy = create(tenant, fake)
    client = tenant.client(["models:write", "models:read"])
    response = client.post(
        tenant.url(f"/policies/{policy['id']}/versions"),
        {"instructions": "Sarcasm about work is fine.", "prompt_style": "safeguard"},
        format="json",
    )
    assert response.status_code == 201, response.content
    version = response.json()
    assert version["number"] == 2 and version["policy"]["instructions"] == "Sarcasm about work is fine."
    assert version["policy"]["categories"][0]["name"] == "insult"
    assert version["policy"]["provider"]["api_key_hint"] == KEY[-4:]
    listed = client.get(tenant.url(f"/policies/{policy['id']}/versions")).json()
    assert [v["number"] for v in listed["results"]] == [1, 2]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"categories": []}, "categories", "non-empty list"),
        ({"categories": [{"name": "none", "definition": "x"}]}, "categories", "nothing to flag"),
        ({"provider": {"base_url": "ftp://x", "model": "m"}}, "provider", "provider.base_url"),
        ({"provider": {"model": "m"}}, "provider", "provider.base_url: required"),
        ({"prompt_style": "poetry"}, "prompt_style", "prompt_style: one of generic"),
        ({"name": ""}, "name", "name: required"),
    ],
)
def test_a_bad_policy_is_a_400_naming_the_field(
    tenant: Tenant, fake: FakeLlm, change: dict[str, Any], field: str, words: str
) -> None:
    response = tenant.client(["models:write"]).post(
        tenant.url("/policies"), policy_body(fake, **change), format="json"
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert words in error["message"] and field in error["details"]


def test_a_policy_is_not_trained_through_the_models_api(tenant: Tenant, fake: FakeLlm) -> None:
    policy = create(tenant, fake)
    client = tenant.client(["models:write"])
    response = client.post(tenant.url(f"/models/{policy['id']}/versions"), {}, format="json")
    assert response.status_code == 400 and "/policies" in response.json()["error"]["message"]


def evaluate(tenant: Tenant, policy_id: int, snapshot: int, **body: Any) -> Any:
    return tenant.client(["models:write", "models:read"]).post(
        tenant.url(f"/policies/{policy_id}/evaluations"), {"snapshot": snapshot, **body}, format="json"
    )


def test_evaluating_a_version_gives_the_trained_model_metrics_from_the_decisions(
    tenant: Tenant, fake: FakeLlm
) -> None:
    fake.script(
        strict_judge(("idiot", "moron", "loser", "fool"))
    )  # misses "jerk": one false negative in five
    snapshot = snapshot_publish(
        org_id=tenant.org.pk, rows=toxicity_rows(20, with_topic=False), heads=[TOXICITY]
    )
    policy = create(tenant, fake)
    response = evaluate(tenant, policy["id"], snapshot)
    assert response.status_code == 201, response.content
    result = response.json()
    assert result["state"] == "succeeded" and result["rows"] == 20 and result["errors"] == 0
    assert result["llm_calls"] == 20
    head = result["evaluation"]["heads"]["toxicity"]
    toxic = head["per_label"]["toxic"]
    assert toxic["confusion"] == {"tp": 8, "fp": 0, "fn": 2, "tn": 10}
    assert toxic["precision"] == 1.0 and toxic["recall"] == 0.8 and toxic["pr_curve"]
    assert head["confusion_matrix"] == {"labels": ["safe", "toxic"], "matrix": [[10, 0], [2, 8]]}
    assert "Any flagged category counts as 'toxic'." in result["warnings"]
    first = result["decisions"][0]
    assert (
        first["flag"] == "unsafe"
        and first["reason"].startswith("Calls the person")
        and first["truth"] == ["toxic"]
    )
    # The policy text and each row's content reached the model.
    assert all("Name-calling or contempt" in fake.last_text(r) for r in fake.requests)
    assert any(TOXIC[0] in fake.last_text(r) for r in fake.requests)
    # The same request again reuses the evaluation.
    again = evaluate(tenant, policy["id"], snapshot)
    assert again.status_code == 200 and len(fake.requests) == 20
    version = tenant.client(["models:read"]).get(tenant.url(f"/models/{policy['id']}/versions/1")).json()
    assert version["metrics"]["heads"]["toxicity"]["per_label"]["toxic"]["recall"] == 0.8


def test_rows_without_a_usable_decision_are_errors_left_out_of_the_metrics(
    tenant: Tenant, fake: FakeLlm
) -> None:
    judge = strict_judge()

    def choose(text: str) -> fake_llm.Answer:
        if "(message 0)" in text:
            return fake_llm.prose()
        if "(message 1)" in text:
            return fake_llm.decision("unsafe", "violence", "Not a category of the policy.")
        return judge

    fake.script(fake_llm.by_content(choose))
    snapshot = snapshot_publish(
        org_id=tenant.org.pk, rows=toxicity_rows(6, with_topic=False), heads=[TOXICITY]
    )
    result = evaluate(tenant, create(tenant, fake)["id"], snapshot).json()
    assert result["state"] == "succeeded" and result["errors"] == 2
    by_row = {d["row"]: d for d in result["decisions"]}
    assert (
        by_row[f"{snapshot}:1"]["error"] == "malformed_answer"
        and "probably fine" in by_row[f"{snapshot}:1"]["raw"]
    )
    assert (
        by_row[f"{snapshot}:2"]["error"] == "unknown_category"
        and "violence" in by_row[f"{snapshot}:2"]["raw"]
    )
    assert "flag" not in by_row[f"{snapshot}:1"]
    assert result["evaluation"]["heads"]["toxicity"]["support"] == 4


def test_an_unreachable_endpoint_fails_the_evaluation_saying_why(tenant: Tenant, fake: FakeLlm) -> None:
    fake.script(fake_llm.status(500))
    snapshot = snapshot_publish(
        org_id=tenant.org.pk, rows=toxicity_rows(4, with_topic=False), heads=[TOXICITY]
    )
    result = evaluate(tenant, create(tenant, fake)["id"], snapshot).json()
    assert result["state"] == "failed" and "HTTP 500" in result["message"] and result["evaluation"] is None


def test_evaluation_bad_input(tenant: Tenant, fake: FakeLlm) -> None:
    snapshot = snapshot_publish(
        org_id=tenant.org.pk,
        rows=toxicity_rows(4),
        heads=[TOXICITY, {"name": "topic", "labels": ["insult", "greeting", "other"], "multi_label": True}],
    )
    policy = create(tenant, fake)
    no_head = evaluate(tenant, policy["id"], snapshot)
    assert no_head.status_code == 400 and "toxicity, topic" in no_head.json()["error"]["message"]
    unknown = evaluate(tenant, policy["id"], 987654)
    assert unknown.status_code == 404 and "987654" in unknown.json()["error"]["message"]
    bad_version = evaluate(tenant, policy["id"], snapshot, head="toxicity", version=9)
    assert bad_version.status_code == 404
    assert evaluate(tenant, policy["id"], snapshot, head="toxicity", limit=-1).status_code == 400


def test_the_diff_lists_the_rows_whose_decision_flipped_with_both_reasons(
    tenant: Tenant, fake: FakeLlm
) -> None:
    snapshot = snapshot_publish(
        org_id=tenant.org.pk, rows=toxicity_rows(10, with_topic=False), heads=[TOXICITY]
    )
    policy = create(tenant, fake)
    client = tenant.client(["models:write", "models:read"])
    fake.script(strict_judge(("idiot", "moron")))
    assert evaluate(tenant, policy["id"], snapshot).json()["state"] == "succeeded"
    edited = [{**CATEGORIES[0], "violates": "Also calling someone a loser."}]
    response = client.post(
        tenant.url(f"/policies/{policy['id']}/versions"), {"categories": edited}, format="json"
    )
    assert response.status_code == 201
    fake.script(strict_judge(("idiot", "moron", "loser")))
    diff = client.post(
        tenant.url(f"/policies/{policy['id']}/diff"),
        {"snapshot": snapshot, "from_version": 1, "to_version": 2},
        format="json",
    )
    assert diff.status_code == 200, diff.content
    body = diff.json()
    assert body["counts"] == {"rows": 10, "flipped": 1, "to_unsafe": 1, "to_safe": 0}
    flip = body["flips"][0]
    assert "loser" in flip["text"] and flip["truth"] == ["toxic"]
    assert flip["from"] == {"flag": "safe", "category": None, "reason": "Friendly small talk."}
    assert flip["to"] == {"flag": "unsafe", "category": "insult", "reason": "Calls the person a loser."}
    # The second version's requests carried the edited policy.
    assert "Also calling someone a loser." in fake.last_text(fake.requests[-1])
    same = client.post(
        tenant.url(f"/policies/{policy['id']}/diff"),
        {"snapshot": snapshot, "from_version": 1, "to_version": 1},
        format="json",
    )
    assert same.status_code == 400


@pytest.mark.cross_tenant("policy-list")
@pytest.mark.cross_tenant("policy-detail")
@pytest.mark.cross_tenant("policy-version-list")
@pytest.mark.cross_tenant("policy-version-detail")
@pytest.mark.cross_tenant("policy-evaluation-list")
@pytest.mark.cross_tenant("policy-evaluation-detail")
@pytest.mark.cross_tenant("policy-diff")
def test_another_orgs_policy_is_not_found(tenant: Tenant, victim: Tenant, fake: FakeLlm) -> None:
    fake.script(strict_judge())
    snapshot = snapshot_publish(
        org_id=victim.org.pk, rows=toxicity_rows(4, with_topic=False), heads=[TOXICITY]
    )
    policy = create(victim, fake)
    evaluation = evaluate(victim, policy["id"], snapshot).json()
    mine = tenant.client(["models:write", "models:read"])
    assert mine.get(tenant.url("/policies")).json()["results"] == []
    pid = policy["id"]
    assert_not_found(mine.get(tenant.url(f"/policies/{pid}")))
    assert_not_found(mine.get(tenant.url(f"/policies/{pid}/versions")))
    assert_not_found(mine.post(tenant.url(f"/policies/{pid}/versions"), {"instructions": "x"}, format="json"))
    assert_not_found(mine.get(tenant.url(f"/policies/{pid}/versions/1")))
    assert_not_found(mine.get(tenant.url(f"/policies/{pid}/evaluations")))
    assert_not_found(
        mine.post(tenant.url(f"/policies/{pid}/evaluations"), {"snapshot": snapshot}, format="json")
    )
    assert_not_found(mine.get(tenant.url(f"/policies/{pid}/evaluations/{evaluation['id']}")))
    assert_not_found(
        mine.post(
            tenant.url(f"/policies/{pid}/diff"),
            {"snapshot": snapshot, "from_version": 1, "to_version": 2},
            format="json",
        )
    )
    # Nor can a policy of mine be evaluated on the victim's snapshot.
    own = create(tenant, fake, name="mine")
    response = evaluate(tenant, own["id"], snapshot)
    assert response.status_code == 404


@pytest.fixture(scope="module")
def toxicity_artifact(pytestconfig: pytest.Config) -> bytes:
    rows = [{**row, "split": "train"} for row in toxicity_rows(40, with_topic=False)]
    return cached_head_artifact(
        cache_dir=pytestconfig.cache.mkdir("policy-compare-artifacts"),
        prefix="",
        rows=rows,
        heads=[TOXICITY],
        max_epochs=60,
    )


def trained_version(tenant: Tenant, blob: bytes) -> ModelVersion:
    """A trained toxicity model in the training service, as a finished run leaves it."""
    key = f"artifacts/org-{tenant.org.pk}/compare/v1.tar.gz"
    get_blob_store().put_bytes(key, blob)
    with org_scope(tenant.org.pk):
        model = Model.objects.create(org_id=tenant.org.pk, name="trained-toxicity", base_model="minilm")
        version = ModelVersion.objects.create(
            org_id=tenant.org.pk,
            model=model,
            number=1,
            base_model="minilm",
            heads=[TOXICITY],
            artifact_key=key,
        )
        TrainingRun.objects.create(org_id=tenant.org.pk, version=version, state=RunState.SUCCEEDED)
    return version


def test_comparing_with_a_trained_model_gives_agreement_and_the_disagreements(
    tenant: Tenant, fake: FakeLlm, toxicity_artifact: bytes
) -> None:
    fake.script(strict_judge(("idiot", "moron", "loser", "fool")))  # lets "get lost, jerk" pass
    snapshot = snapshot_publish(
        org_id=tenant.org.pk, rows=toxicity_rows(10, with_topic=False), heads=[TOXICITY]
    )
    policy = create(tenant, fake)
    evaluation = evaluate(tenant, policy["id"], snapshot).json()
    trained = trained_version(tenant, toxicity_artifact)
    client = tenant.client(["models:write", "models:read"])
    response = client.post(
        tenant.url(f"/policies/{policy['id']}/compare"),
        {"evaluation": evaluation["id"], "model": {"model": trained.model_id, "version": 1}},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["rows"] == 10 and body["head"] == "toxicity"
    # The trained model learnt the toxic rows, "jerk" included: the policy disagrees on that row.
    (disagreement,) = body["disagreements"]
    assert "jerk" in disagreement["text"] and body["agreement"] == 0.9
    assert (
        disagreement["policy"]["labels"] == ["safe"]
        and disagreement["policy"]["reason"] == "Friendly small talk."
    )
    assert (
        disagreement["model"]["labels"] == ["toxic"] and disagreement["model"]["label_scores"]["toxic"] > 0.5
    )
    missing = client.post(
        tenant.url(f"/policies/{policy['id']}/compare"),
        {"evaluation": evaluation["id"], "model": {"model": trained.model_id, "version": 7}},
        format="json",
    )
    assert missing.status_code == 404 and "no trained version 7" in missing.json()["error"]["message"]
    bad = client.post(tenant.url(f"/policies/{policy['id']}/compare"), {"evaluation": "x"}, format="json")
    assert bad.status_code == 400


@pytest.mark.cross_tenant("policy-compare")
def test_another_orgs_policy_cannot_be_compared(
    tenant: Tenant, victim: Tenant, fake: FakeLlm, toxicity_artifact: bytes
) -> None:
    fake.script(strict_judge())
    snapshot = snapshot_publish(
        org_id=victim.org.pk, rows=toxicity_rows(4, with_topic=False), heads=[TOXICITY]
    )
    policy = create(victim, fake)
    evaluation = evaluate(victim, policy["id"], snapshot).json()
    trained = trained_version(victim, toxicity_artifact)
    body = {"evaluation": evaluation["id"], "model": {"model": trained.model_id, "version": 1}}
    mine = tenant.client(["models:write", "models:read"])
    assert_not_found(mine.post(tenant.url(f"/policies/{policy['id']}/compare"), body, format="json"))
    own = create(tenant, fake, name="mine")
    # My policy against the victim's evaluation and trained model: neither is mine.
    assert_not_found(mine.post(tenant.url(f"/policies/{own['id']}/compare"), body, format="json"))


def test_an_evaluation_whose_process_died_is_resumed_by_the_sweep_then_failed_when_it_keeps_dying(
    tenant: Tenant, fake: FakeLlm
) -> None:
    fake.script(strict_judge())
    snapshot = snapshot_publish(
        org_id=tenant.org.pk, rows=toxicity_rows(6, with_topic=False), heads=[TOXICITY]
    )
    policy = create(tenant, fake)
    evaluation = evaluate(tenant, policy["id"], snapshot).json()
    long_ago = timezone.now() - timedelta(minutes=30)
    # Its process died halfway: running, its heartbeat old, no decisions stored.
    PolicyEvaluation.objects.unscoped().filter(pk=evaluation["id"]).update(
        state=PolicyEvaluation.RUNNING, done=3, decisions=[], evaluation=None, heartbeat_at=long_ago
    )
    # A slow one (its heartbeat recent) is left alone.
    other = evaluate(tenant, policy["id"], snapshot, limit=2).json()
    PolicyEvaluation.objects.unscoped().filter(pk=other["id"]).update(
        state=PolicyEvaluation.RUNNING, heartbeat_at=timezone.now()
    )

    def start_here(evaluation_id: int, org_id: int) -> None:
        with org_scope(org_id):
            evaluation_run(evaluation_id=evaluation_id)

    assert evaluations_recover(start=start_here) == {"resumed": 1, "failed": 0}
    resumed = (
        tenant.client(["models:read"])
        .get(tenant.url(f"/policies/{policy['id']}/evaluations/{evaluation['id']}"))
        .json()
    )
    assert resumed["state"] == "succeeded" and resumed["rows"] == 6 and len(resumed["decisions"]) == 6
    assert evaluations_recover(start=start_here) == {"resumed": 0, "failed": 0}

    PolicyEvaluation.objects.unscoped().filter(pk=evaluation["id"]).update(
        state=PolicyEvaluation.RUNNING, heartbeat_at=long_ago, recoveries=3
    )
    assert evaluations_recover(start=start_here) == {"resumed": 0, "failed": 1}
    failed = PolicyEvaluation.objects.unscoped().get(pk=evaluation["id"])
    assert failed.state == "failed" and "stopped 3 times (process_died)" in failed.message


def test_an_evaluations_llm_calls_are_billed_and_refused_beyond_the_plan(
    tenant: Tenant, fake: FakeLlm, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(ARBITER_BILLING_PLANS='{"free": {"meters": {"llm_call": {"included": 10}}}}')
    entitlements_cache_clear()
    fake.script(strict_judge())
    snapshot = snapshot_publish(
        org_id=tenant.org.pk, rows=toxicity_rows(6, with_topic=False), heads=[TOXICITY]
    )
    policy = create(tenant, fake)
    assert evaluate(tenant, policy["id"], snapshot).status_code == 201
    (cost,) = published("policy.evaluated")
    assert cost["llm_calls"] == 6 and cost["rows"] == 6 and cost["state"] == "succeeded"
    event = Event.from_dict(OutboxEvent.objects.using("training").filter(type="policy.evaluated").get().body)
    deliver_to(event, service="billing")
    with transaction.atomic(using="billing"), org_scope(tenant.org.pk):
        billing_logic.entitlements_publish(
            account=billing_logic.account_get(org_id=tenant.org.pk), reason="usage"
        )
    announcement = published_events("entitlements.changed", alias="billing")[-1]
    assert announcement.data["meters"]["llm_call"]["used"] == 6
    deliver_to(announcement, service="training")
    # 6 of 10 used: a 6-row evaluation would go past the plan, and is refused before any call.
    before = len(fake.requests)
    refused = evaluate(tenant, policy["id"], snapshot, limit=5)
    assert refused.status_code == 429 and "LLM calls" in refused.json()["error"]["message"]
    assert len(fake.requests) == before
    assert evaluate(tenant, policy["id"], snapshot, limit=4).status_code == 201
    # Asking again for an evaluation that exists costs nothing and is not refused.
    assert evaluate(tenant, policy["id"], snapshot).status_code == 200
